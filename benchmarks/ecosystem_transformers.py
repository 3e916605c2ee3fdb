"""check_ecosystem.sh, transformers check: run an exported policy with transformers ALONE (no project code on the
path) and compare its actions with the policy's. Usage: python ecosystem_transformers.py <export folder> <ref.npz>
ref.npz (written by the project): rgb u8 [N, S, S, 3], state [N, 7], text [N], noise [N, C, 7], action [N, C, 7] (the
policy's deterministic chunks from that noise). Prints one line; exit 1 on a mismatch."""

import sys
import warnings

import numpy as np
import torch
from transformers import AutoProcessor, PI0ForConditionalGeneration
from transformers.utils import logging

folder, ref_path = sys.argv[1], sys.argv[2]
logging.set_verbosity_warning()
caught = []
handler_logs = []
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import io
    import logging as pylog

    buf = io.StringIO()
    h = pylog.StreamHandler(buf)
    logging.get_logger().addHandler(h)  # transformers' load report (missing / unexpected keys) goes to its logger
    model = PI0ForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    logging.get_logger().removeHandler(h)
load_log = buf.getvalue() + "".join(str(x.message) for x in w)
ref = np.load(ref_path)
cfg = model.config
out, worst = [], 0.0
for i in range(len(ref["rgb"])):
    inputs = processor(images=[ref["rgb"][i]], text=[str(ref["text"][i])], state=ref["state"][i:i + 1],
                       max_length=processor.image_seq_length + 48, truncation=True)
    inputs["state"] = inputs["state"].clamp(-1, 1)
    noise = torch.zeros(1, cfg.chunk_size, cfg.max_action_dim)
    noise[0, :, :7] = torch.from_numpy(ref["noise"][i])
    a = model.sample_actions(**inputs, noise=noise)[0, :, :7].clamp(-1, 1)  # K from config.json
    mean, std = torch.tensor(processor.actions_mean), torch.tensor(processor.actions_std)
    act = a * std + mean
    act[:, 6] = torch.where(a[:, 6] > 0.5, 1.0, -1.0)
    worst = max(worst, float((act - torch.from_numpy(ref["action"][i])).abs().max()))
missing = "missing" in load_log.lower() or "newly initialized" in load_log.lower()
ok = worst < 1e-4 and not missing and cfg.num_inference_steps == int(ref["K"])
print(f"{'PASS' if ok else 'FAIL'} transformers: AutoProcessor + PI0ForConditionalGeneration.from_pretrained, "
      f"K={cfg.num_inference_steps} (policy {int(ref['K'])}) chunk={cfg.chunk_size}, {len(ref['rgb'])} frames, "
      f"max |action - policy| = {worst:.2e}, load warnings: {'missing keys' if missing else 'none'}")
if missing:
    print(load_log.strip()[:600])
sys.exit(0 if ok else 1)
