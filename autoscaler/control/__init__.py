"""The control core and the interfaces (ports) its drivers implement."""
