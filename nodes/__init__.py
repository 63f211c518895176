"""ComfyUI nodes of the SafeCFG pack (classic V1 node API). Import with ``from .nodes import ...`` only."""
