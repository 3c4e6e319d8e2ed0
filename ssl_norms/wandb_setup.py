"""W&B without surprises: offline when no credentials, one run id per run directory."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from jsonargparse import Namespace


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def configure_wandb_args(args: Namespace, run_dir: Path) -> None:
    """Point a WandbLogger's init args at ``run_dir`` and keep its run id there, so a resumed
    run continues the same W&B run. Without credentials (or with WANDB_MODE=offline) the run is
    offline and never waits on the network; ``wandb sync run_dir/wandb`` uploads it later."""
    args.save_dir = str(run_dir)
    id_file = run_dir / "wandb_run_id"
    if not args.get("id"):
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12])
        args.id = id_file.read_text().strip()
    if os.environ.get("WANDB_MODE") == "offline" or not wandb_has_credentials():
        args.offline = True
    args.resume = "allow"  # forwarded to wandb.init: same id continues the run
