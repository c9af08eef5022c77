"""The training phases and where their checkpoints live: the one list of names (options use the
type, so --help shows the choices) and the one mapping to folders. Standard library only, so shell
scripts read it too:

    python3 -m nanochat.phases   # a line per phase: name, checkpoint folder, script (runpod_storage.sh, launch.sh)
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

Phase = Literal["base", "mid", "sft", "rl"]


@dataclass(frozen=True)
class PhaseInfo:
    dirname: str  # folder under the base dir
    producer: str  # the script that writes it, named in "no checkpoint" errors
    label: str  # what its checkpoint is called in messages ("train the SFT model first")


PHASES: dict[str, PhaseInfo] = {
    "base": PhaseInfo("base_checkpoints", "scripts.base_train", "base model"),
    "mid": PhaseInfo("mid_checkpoints", "scripts.mid_train", "midtrained model"),
    "sft": PhaseInfo("chatsft_checkpoints", "scripts.chat_sft", "SFT model"),
    "rl": PhaseInfo("chatrl_checkpoints", "scripts.chat_rl", "RL model"),
}
assert tuple(PHASES) == typing.get_args(Phase)

if __name__ == "__main__":
    for name, info in PHASES.items():
        print(f"{name} {info.dirname} {info.producer.split('.')[-1]}")
