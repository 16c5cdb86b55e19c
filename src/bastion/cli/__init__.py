"""The ``bastion`` command line."""

from . import _admin as _admin  # registers the keys, tenants and namespaces commands
from . import _approvals as _approvals  # registers approvals, approve and deny
from . import _demo as _demo  # registers demo
from . import _doctor as _doctor  # registers doctor
from . import _record as _record  # registers record export|verify|key
from . import _runs as _runs  # registers run, runs, logs, cancel, audit and worker
from . import _trust as _trust  # registers trust show|promote|demote|revoke|restore
from . import _whatif as _whatif  # registers what-if
from ._app import app, load_manifests, main

__all__ = ["app", "load_manifests", "main"]
