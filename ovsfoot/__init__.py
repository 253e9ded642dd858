"""ovsfoot: which containers and VMs put heavy traffic on an OVS/OVN node."""

__version__ = "0.1.0"
