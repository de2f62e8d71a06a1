"""keybuzz-fix: repair the broken ClusterIP/VXLAN path of a small K3s cluster."""

__version__ = "0.1.0"
