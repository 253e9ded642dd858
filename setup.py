from setuptools import find_packages, setup

setup(
    name="ovsfoot",
    version="0.1.0",
    description="Per-node elephant-flow footprints for Open vSwitch / OVN hosts",
    # Not integration/ (the test and lab harness): it runs from the source tree.
    packages=find_packages(include=["ovsfoot", "ovsfoot.*"]),
    # The cluster view's OVSDB schema, for `ovsfoot cluster-db start` (importlib.resources);
    # the eBPF program: ovsfoot/bpf/ovsfoot_ct.c is a link to bpf/ovsfoot_ct.c, the one
    # source, that the build copies into the wheel as a file (tests/test_wheel.py).
    package_data={"ovsfoot": ["cluster.ovsschema", "bpf/ovsfoot_ct.c",
                              "bpf/ovsfoot_isolate.c"]},
    include_package_data=True,
    python_requires=">=3.11",
    # bcc comes from Debian's python3-bpfcc: the virtualenv is made with
    # --system-site-packages so that it sees it.
    install_requires=["ovs>=3.1", "pyroute2>=0.9", "msgpack>=1.0", "prometheus_client>=0.16"],
    extras_require={"test": ["pytest>=7", "ruff>=0.4"], "lab": ["virtme-ng>=1.42"]},
    entry_points={"console_scripts": ["ovsfoot=ovsfoot.cli:main", "ovsfoot-cni=ovsfoot.cni:main"]},
)
