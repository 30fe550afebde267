"""Starting or joining Ray without traffic beyond loopback.

Ray otherwise probes cloud metadata addresses and binds external interfaces: these settings
(verified in STACK-NOTES) keep a local Ray on this machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hyrax_mlops.config import Config

QUIET_RAY = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    # with usage stats off, a head's dashboard still sends one "disabled" report to
    # usage-stats.ray.io (seen with strace): point it at a closed loopback port
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
}


def quiet_ray_environment() -> None:
    """Call before `import ray`: Ray reads some of these at import, and without them it
    rewrites a 127.0.0.1 head address to the machine's external one and never connects."""
    for key, value in QUIET_RAY.items():
        os.environ.setdefault(key, value)
    boot = Path.home() / "ray_bootstrap_config.yaml"
    if not boot.exists():  # tells Ray it is not on a cloud VM, so it skips metadata probes
        boot.write_text("provider: {type: local}\n")


def init_ray(cfg: Config):
    """Join `ray.address` / RAY_ADDRESS, or start a local Ray; idempotent."""
    quiet_ray_environment()  # before the import: Ray reads these when it is imported
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "local"
    # Ray's own start-up lines stay off the terminal; its warnings and errors still show
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True,
                    "logging_level": logging.WARNING}
    if address == "local":
        kwargs["num_cpus"] = cfg.ray.num_cpus or None
    elif address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost"):
        # joining a head on loopback: say so, or the driver waits for a raylet on the
        # machine's external address
        kwargs["_node_ip_address"] = "127.0.0.1"
        kwargs.pop("include_dashboard")
    ray.init(address=address, **kwargs)
    return ray
