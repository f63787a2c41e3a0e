#!/usr/bin/env bash
# Downloads the wheels that bench/gpu_check.py installs on the GPU machine (Python 3.12, manylinux x86_64, no
# network there) into .gpu_wheels/ and prints their total size: the folder travels with the working tree, which
# may carry 64 MiB in all.
#
#   bash scripts/gpu_wheels.sh           # trl, datasets, cut-cross-entropy and their dependencies, pinned
#   bash scripts/gpu_wheels.sh --full    # also numpy, pandas and pyarrow (about 80 MiB more: too large to carry)
#
# The device image has torch, triton, transformers, accelerate and peft (never downloaded here), and also
# numpy, pandas and pyarrow, which alone would take 79 MiB: those three come only with --full. Everything else
# in the dependency closure of trl, datasets, cut-cross-entropy and this project is here, at the versions pip
# resolved for Python 3.12 on top of that image; on the device pip takes only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${GPU_WHEELS_DIR:-.gpu_wheels}"
LIMIT_MIB=64

PACKAGES=(
  # what the checks need; the same trl and datasets as this project's tests
  trl==1.9.0 datasets==4.8.4 cut-cross-entropy==25.1.1
  # datasets' own: absent from the device image (dill, multiprocess) or pinned below its version (fsspec)
  dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0 xxhash==4.1.0
  httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 idna==3.20 certifi==2026.10.19.post1
  requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3 filelock==4.3.1 packaging==26.4 tqdm==4.70.1
  huggingface-hub==1.33.0 hf-xet==1.8.0 click==8.5.1 typing-extensions==4.16.0 pyyaml==6.0.4
  aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 attrs==26.1.0 frozenlist==1.8.0 multidict==7.2.1
  propcache==0.5.4 yarl==1.25.1 python-dateutil==4.0.0 tzdata==2026.6
  # trl's
  jinja2==3.1.6 markupsafe==3.0.4
  # this project's (pyproject dependencies; pydantic only for the Axolotl adapter)
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 pluggy==1.7.0
  rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0
)
if [[ "${1:-}" == "--full" ]]; then
  PACKAGES+=(numpy==2.5.5 pandas==3.1.1 pyarrow==26.0.1)
fi

rm -rf "$DEST"
mkdir -p "$DEST"
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 "${PLATFORMS[@]}" --dest "$DEST" "${PACKAGES[@]}"

count=$(find "$DEST" -name '*.whl' | wc -l)
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
ls -l "$DEST" | awk 'NR > 1 {printf "%10d  %s\n", $5, $9}' | sort -rn
awk -v b="$bytes" -v n="$count" -v d="$DEST" 'BEGIN {printf "%d wheels in %s: %.1f MiB\n", n, d, b / 1048576}'
if (( bytes > LIMIT_MIB * 1048576 )); then
  echo "warning: over the ${LIMIT_MIB} MiB that can travel with the working tree" >&2
fi
if ! git check-ignore -q "$DEST/x.whl"; then
  echo "note: $DEST/ is not ignored by git; add it to .gitignore (or .git/info/exclude) and carry it explicitly" >&2
fi
