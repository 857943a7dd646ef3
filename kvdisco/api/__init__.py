"""kvdisco's client API: the etcd v3 JSON gateway (codec here, aiohttp handlers beside it)."""
