"""Linearizability testing: a WGL checker, a fault-injecting history recorder, and the clusters they run on.

Kept apart from tests/integration because the pipeline is database-agnostic:
it speaks only the etcd v3 JSON gateway, so it is proven against real etcd
first and then pointed at kvdisco through the same `Cluster` interface.
"""
