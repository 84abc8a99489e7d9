#!/usr/bin/env bash
# Fetch WordNet's sense order (index.{noun,verb,adj,adv}) and sense counts (cntlist.rev) for the built-in
# model's data: Debian's wordnet-base, the package the corpus's wordnet_glosses.txt.xz was made from.
# The package is downloaded and unpacked, never installed; only the five files are kept, xz-compressed,
# with the package's copyright file (the WordNet licence). Not committed: OUT is under .data/ (git-ignored).
# Usage: scripts/fetch_wordnet_index.sh [OUT]   (default .data/wordnet)
set -euo pipefail
OUT=${1:-.data/wordnet}
EXPECTED=61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752  # wordnet-base_1:3.0-37_all.deb
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && apt-get download wordnet-base=1:3.0-37 >/dev/null 2>&1 || apt-get download wordnet-base)
DEB=$(ls "$TMP"/wordnet-base_*.deb)
GOT=$(sha256sum "$DEB" | cut -d' ' -f1)
if [ "$GOT" != "$EXPECTED" ]; then
    echo "warning: $(basename "$DEB") has sha256 $GOT, not the 1:3.0-37 package's $EXPECTED" >&2
fi
dpkg-deb -x "$DEB" "$TMP/x"
mkdir -p "$OUT"
for f in index.noun index.verb index.adj index.adv cntlist.rev; do
    xz -9c "$TMP/x/usr/share/wordnet/$f" > "$OUT/$f.xz"
done
cp "$TMP/x/usr/share/doc/wordnet-base/copyright" "$OUT/copyright"
echo "$(basename "$DEB") sha256 $GOT" > "$OUT/SOURCE"
ls -l "$OUT"
