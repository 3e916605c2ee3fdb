#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine (or a GPU workstation):
#   1. system packages: Python venv support, and Mesa lavapipe >= 24.3 (software Vulkan) when there
#      is no NVIDIA GPU to render with (Debian bookworm's own Mesa 22.x fails: use bookworm-backports);
#   2. a virtualenv at .venv in the repo root;
#   3. PyTorch: the CPU build where there is no CUDA (no gigabytes of CUDA wheels on a CPU machine),
#      the default CUDA build where `nvidia-smi` works;
#   4. the pinned requirements;
#   5. ManiSkill data (WidowX + SimplerEnv Bridge): ../shared/assets/maniskill when present,
#      else ManiSkill's own downloader into MS_ASSET_DIR (needs internet).
# Re-running is cheap: every step checks before it acts. Usage: bash scripts/setup.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[setup] %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
TORCH_VERSION="2.13.0"
have_nvidia() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

# ---- 1. system packages -------------------------------------------------------------------------
apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get: install these yourself: $*"; return 0
  fi
  [ "$apt_updated" = 1 ] || { $SUDO apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
PY="${PYTHON:-python3}"
if ! "$PY" -c "import venv, ensurepip" >/dev/null 2>&1; then
  log "installing python3-venv"; apt_install python3-venv python3-dev
fi
mesa_version() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed -E 's/^[0-9]+://; s/[^0-9.].*$//'; }
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
if have_nvidia; then
  log "NVIDIA GPU found: rendering through the NVIDIA Vulkan driver"
  ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 || apt_install libvulkan1
else
  mv="$(mesa_version || true)"
  if [ -z "$mv" ] || ! version_ge "$mv" "24.3"; then
    log "installing Mesa lavapipe >= 24.3 (have: ${mv:-none})"
    if grep -q "bookworm" /etc/os-release 2>/dev/null; then
      echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
      apt_updated=0
      apt_install -t bookworm-backports mesa-vulkan-drivers libvulkan1 libegl1 libgl1
    else
      apt_install mesa-vulkan-drivers libvulkan1 libegl1 libgl1
    fi
    mv="$(mesa_version || true)"
    version_ge "${mv:-0}" "24.3" || { log "ERROR: Mesa ${mv:-none} < 24.3: SAPIEN cannot render on the CPU"; exit 1; }
  fi
  log "software Vulkan: Mesa lavapipe $mv"
fi

# ---- 2. virtualenv ------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip wheel setuptools
fi
VPY="$REPO/.venv/bin/python"

# ---- 3. PyTorch ---------------------------------------------------------------------------------
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  if have_nvidia; then
    log "installing torch $TORCH_VERSION (CUDA build)"
    "$VPY" -m pip install -q "torch==$TORCH_VERSION"
  else
    pytag="$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
    local_whl="$(ls /opt/wheels/torch-${TORCH_VERSION}+cpu-${pytag}-*.whl 2>/dev/null | head -n1 || true)"
    if [ -n "$local_whl" ]; then
      log "installing torch $TORCH_VERSION (CPU build) from $local_whl"
      "$VPY" -m pip install -q "$local_whl"
    else
      log "installing torch $TORCH_VERSION (CPU build)"
      "$VPY" -m pip install -q "torch==$TORCH_VERSION" --index-url "${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
    fi
  fi
fi

# ---- 4. pinned requirements ---------------------------------------------------------------------
stamp=".venv/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  log "installing requirements.txt"
  "$VPY" -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi

# ---- 5. ManiSkill data --------------------------------------------------------------------------
# shellcheck source=/dev/null
source "$REPO/scripts/env.sh"
if [ -n "${MS_ASSET_DIR:-}" ] && [ -d "$MS_ASSET_DIR/data/robots/widowx" ]; then
  log "ManiSkill data: $MS_ASSET_DIR"
else
  export MS_ASSET_DIR="${MS_ASSET_DIR:-$HOME/.maniskill}"
  if [ ! -d "$MS_ASSET_DIR/data/robots/widowx" ]; then
    log "downloading ManiSkill data (WidowX, SimplerEnv Bridge) into $MS_ASSET_DIR"
    "$VPY" -m mani_skill.utils.download_asset widowx250s -y
    "$VPY" -m mani_skill.utils.download_asset bridge_v2_real2sim -y
  fi
fi
log "ready: source scripts/env.sh to use the environment"
