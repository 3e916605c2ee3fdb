# Sourced by check_ecosystem.sh: build_lerobot_env <version> -> a side virtualenv with LeRobot's dataset reader
# beside this project's CPU torch (LeRobot pins torch < 2.8 / < 2.11 and older datasets / huggingface_hub, so it
# cannot share .venv): lerobot --no-deps plus the few modules LeRobotDataset imports. PyPI's torchvision for
# torch 2.13 is a CUDA build whose extension does not load with the CPU torch; LeRobotDataset only uses the
# pure-Python torchvision.transforms (and `import torchvision` in video_utils), so the side env gets those files
# under a stub torchvision/__init__.py. Idempotent: a finished env is marked by <env>/.ready.
ECO_CACHE="${GENSIM_ECOSYSTEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gensim-ecosystem}"

build_lerobot_env() {  # $1 = lerobot version (0.3.3 | 0.4.4); prints the env's python
  local v="$1" env="$ECO_CACHE/lerobot-$1" ds hub av extra=()
  case "$v" in
    0.3.*) ds="datasets==3.6.0"; hub="huggingface_hub>=0.34.2,<1.0"; av="av>=14.2.0" ;;
    *)     ds="datasets>=4.0.0,<5.0.0"; hub="huggingface_hub>=0.34.2,<0.36.0"; av="av>=15.0.0,<16.0.0"
           extra=("accelerate>=1.10.0,<2.0.0") ;;  # lerobot.utils.utils imports it
  esac
  if [ ! -f "$env/.ready" ]; then
    rm -rf "$env"
    python3 -m venv "$env" >&2 || return 1
    local pip=("$env/bin/python" -m pip install -q --disable-pip-version-check)
    local torch_whl; torch_whl="$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1)"
    if [ -n "$torch_whl" ]; then "${pip[@]}" "$torch_whl" >&2 || return 1
    else "${pip[@]}" torch==2.13.0 --index-url "${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}" \
      --extra-index-url https://pypi.org/simple >&2 || return 1; fi
    "${pip[@]}" "$ds" "$hub" "$av" "jsonlines>=4.0.0" "draccus==0.10.0" "einops>=0.8.0" "termcolor>=2.4.0" \
      "deepdiff>=7.0.1,<9.0.0" "packaging>=24.2,<26.0" pillow "${extra[@]}" >&2 || return 1
    "${pip[@]}" --no-deps "lerobot==$v" >&2 || return 1
    local tmp; tmp="$(mktemp -d)"
    "$env/bin/python" -m pip download -q --disable-pip-version-check --no-deps "torchvision==0.28.0" -d "$tmp" >&2 \
      || "$env/bin/python" -m pip download -q --disable-pip-version-check --no-deps "torchvision<=0.29.1" -d "$tmp" >&2 \
      || return 1
    local site; site="$("$env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$env/bin/python" - "$tmp"/torchvision-*.whl "$site" <<'PY' || return 1
import sys, zipfile
whl, site = sys.argv[1], sys.argv[2]
keep = ("torchvision/transforms/", "torchvision/tv_tensors/", "torchvision/utils.py", "torchvision/_utils.py",
        "torchvision/_internally_replaced_utils.py")
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(keep) and n.endswith(".py"):
            z.extract(n, site)
open(f"{site}/torchvision/__init__.py", "w").write(
    "# stub (gensim check_ecosystem.sh): the pure-Python transforms of the torchvision wheel, no C extension\n"
    f"__version__ = {whl.rsplit('/', 1)[-1].split('-')[1]!r}\n_image_backend = 'PIL'\n_video_backend = 'pyav'\n"
    "def get_image_backend():\n    return _image_backend\n"
    "def _is_tracing():\n    return False\n")
PY
    rm -rf "$tmp"
    touch "$env/.ready"
  fi
  echo "$env/bin/python"
}
