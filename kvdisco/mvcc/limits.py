"""Every size and count limit of the revisioned store, with why it has that value.

Names carry the unit last. The relations between them are checked at import time.
"""

from __future__ import annotations

__all__ = ["KEY_BYTES_MAX", "REQUEST_BYTES_MAX", "TXN_OPS_MAX", "VALUE_BYTES_MAX"]

#: Largest client request etcd accepts by default (``--max-request-bytes``, 1.5 MiB).
REQUEST_BYTES_MAX = 1536 * 1024

#: Largest key. etcd has no separate key limit: a key is bounded by the request size.
KEY_BYTES_MAX = REQUEST_BYTES_MAX

#: Largest value. As for keys, the request size is the only bound etcd applies.
VALUE_BYTES_MAX = REQUEST_BYTES_MAX

#: etcd's ``--max-txn-ops`` default: the most compares, success ops or failure ops one txn
#: level may hold; a nested txn gets what its parent's longest list left over.
TXN_OPS_MAX = 128

if not 0 < KEY_BYTES_MAX <= REQUEST_BYTES_MAX:
    raise ValueError("KEY_BYTES_MAX must be in (0, REQUEST_BYTES_MAX]")
if not 0 < VALUE_BYTES_MAX <= REQUEST_BYTES_MAX:
    raise ValueError("VALUE_BYTES_MAX must be in (0, REQUEST_BYTES_MAX]")
if TXN_OPS_MAX < 1:
    raise ValueError("TXN_OPS_MAX must be at least 1")
