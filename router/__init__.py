"""The data plane: an asyncio proxy that measures, splits, buffers and streams requests."""
