"""kube-scheduler extender: `ovsfoot scheduler-extender --listen ADDR --cluster-db REMOTE`.

scoring.py      pod class, node facts and scores (no I/O)
clusterview.py  the cluster view from ovsfoot's cluster database (an IDL in a thread)
server.py       the extender v1 HTTP API: POST filter and prioritize, GET /healthz
"""
