"""check_ecosystem.sh, project side: the policy's deterministic action chunks on some dataset frames, from seeded noise,
for ecosystem_transformers.py to reproduce with transformers alone.
Usage: python benchmarks/ecosystem_reference.py <ckpt or export folder> <LeRobotDataset root> <out.npz> [frames]"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lerobot_format as lf  # noqa: E402
import ppoflow_pi0 as P  # noqa: E402


def reference(policy: P.PI0Policy, rgb: np.ndarray, state: np.ndarray, text: list[str], seed: int = 0) -> dict:
    """rgb u8 [N, S, S, 3] at the policy's image size, state [N, 7] -> the npz fields (noise drawn as act draws it)."""
    policy.eval()
    acts, noises = [], []
    for i in range(len(rgb)):
        obs = {"rgb": torch.from_numpy(rgb[i:i + 1]), "state": torch.from_numpy(state[i:i + 1]), "instruction": [text[i]]}
        torch.manual_seed(seed + i)
        noises.append(torch.randn(1, policy.config.chunk, policy.config.action_dim)[0].numpy())
        torch.manual_seed(seed + i)  # chain() draws exactly this noise first
        acts.append(policy.act(obs)[0].numpy())
    return {"rgb": rgb, "state": state, "text": np.array(text), "noise": np.stack(noises), "action": np.stack(acts),
            "K": np.array(policy.config.num_steps)}


if __name__ == "__main__":
    src, root, out = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 6
    policy = P.load_policy(src)
    eps = lf.read_frames(root)
    frames = [(e["rgb"][t], e["state"][t], e["task"]) for e in eps for t in range(0, len(e["rgb"]), 7)][:n]
    rgb = np.stack([f[0] for f in frames])
    if rgb.shape[1] != policy.config.image_size:
        raise SystemExit(f"dataset images are {rgb.shape[1]} px, the policy's {policy.config.image_size}")
    np.savez(out, **reference(policy, rgb, np.stack([f[1] for f in frames]).astype(np.float32), [f[2] for f in frames]))
