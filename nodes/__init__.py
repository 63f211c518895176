"""ComfyUI nodes of the SafeCFG pack (V3 node API: one module per node). Import with ``from .nodes import ...`` only."""
