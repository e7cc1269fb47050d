"""The local driver: `sluice up` runs router, core and replicas as processes on one machine."""
