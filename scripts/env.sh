# Source me: runtime environment for every stage and test (no installs; see scripts/setup.sh).
#   source scripts/env.sh
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -d "$_repo/.venv/bin" ] && export PATH="$_repo/.venv/bin:$PATH"
# ManiSkill data: the offline copy beside the checkout when present, else ManiSkill's default folder
# (filled by scripts/setup.sh through ManiSkill's own downloader on a machine with internet).
if [ -z "${MS_ASSET_DIR:-}" ] && [ -d "$_repo/../shared/assets/maniskill/data" ]; then
  export MS_ASSET_DIR="$(cd "$_repo/../shared/assets/maniskill" && pwd)"
fi
# Software Vulkan (Mesa lavapipe) when the machine has no NVIDIA GPU to render with.
if [ -z "${VK_ICD_FILENAMES:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  for _icd in /usr/share/vulkan/icd.d/lvp_icd.json /usr/share/vulkan/icd.d/lvp_icd.x86_64.json; do
    [ -f "$_icd" ] && export VK_ICD_FILENAMES="$_icd" && break
  done
fi
export WANDB_MODE="${WANDB_MODE:-offline}"
export PYTHONUNBUFFERED=1
unset _repo _icd
