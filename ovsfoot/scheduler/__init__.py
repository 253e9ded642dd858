"""kube-scheduler extender: `ovsfoot scheduler-extender --listen ADDR --sb REMOTE`.

scoring.py  pod class, node facts and scores (no I/O)
sbview.py   the cluster view from the OVN Southbound database (an IDL in a thread)
server.py   the extender v1 HTTP API: POST filter and prioritize, GET /healthz
"""
