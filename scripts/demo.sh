#!/usr/bin/env bash
# The main job on real photos: index Caltech101 (9,145 files) and search it with a photo.
# Usage: scripts/demo.sh [PHOTOS_DIR] [QUERY_IMAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
photos="${1:-../shared/datasets/caltech101}"
query="${2:-$photos/Faces_easy/image_0001.jpg}"
scripts/setup.sh export
mkdir -p demo
.venv/bin/lookalike index "$photos" --index demo/photos.lookalike
.venv/bin/lookalike search "$query" --index demo/photos.lookalike -k 11 --grid demo/results.png
.venv/bin/lookalike info --index demo/photos.lookalike --failures 5
