#!/usr/bin/env bash
# Install the NLTK data the concept pipeline needs, without nltk.download (no network to NLTK's
# servers here): WordNet 3.0 from Debian's packages, laid out as NLTK's corpora/wordnet.
#
#   scripts/install_nltk_data.sh DEST        # then: export NLTK_DATA=DEST
#
# Idempotent: does nothing when DEST/corpora/wordnet already holds data.noun and lexnames.
# Debian ships WordNet without the `lexnames` file NLTK's reader opens first, so it is generated
# from the lexnames(5WN) man page in the same package (lines "NN<TAB>name<TAB>pos").
# Needs apt-get and dpkg-deb (Debian/Ubuntu); runs `apt-get update` only when the package lists
# are missing.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST   (the folder NLTK_DATA will point at)" >&2
    exit 2
fi
DEST=$1
WORDNET="$DEST/corpora/wordnet"

if [ -s "$WORDNET/data.noun" ] && [ -s "$WORDNET/lexnames" ]; then
    echo "WordNet already installed in $WORDNET"
    exit 0
fi

for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found; on a machine with network use" \
             "python -m nltk.downloader -d $DEST wordnet" >&2
        exit 1
    }
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# apt drops privileges to _apt for downloads; a world-readable folder avoids its warning
chmod 755 "$WORK"
PACKAGES="wordnet-base wordnet-sense-index"

if ! (cd "$WORK" && apt-get download $PACKAGES); then
    echo "apt-get download failed; refreshing the package lists and retrying" >&2
    apt-get update -qq
    (cd "$WORK" && apt-get download $PACKAGES)
fi

for deb in "$WORK"/*.deb; do
    dpkg-deb -x "$deb" "$WORK/root"
done

SRC="$WORK/root/usr/share/wordnet"
MAN="$WORK/root/usr/share/man/man5/lexnames.5WN.gz"
[ -s "$SRC/data.noun" ] || { echo "error: the packages hold no usr/share/wordnet/data.noun" >&2; exit 1; }
[ -s "$MAN" ] || { echo "error: the packages hold no lexnames.5WN man page" >&2; exit 1; }

# Build in a sibling folder, then rename: a run killed midway never leaves a half install that
# the idempotency check above would accept.
mkdir -p "$DEST/corpora"
STAGE=$(mktemp -d "$DEST/corpora/.wordnet.XXXXXX")
cp -r "$SRC"/. "$STAGE"/

# Table rows of the man page: "00<TAB>adj.all<TAB>description"; the syntactic category number
# follows from the file name's prefix (1 noun, 2 verb, 3 adjective, 4 adverb).
zcat "$MAN" | awk -F'\t' '
    /^[0-9][0-9]\t/ {
        name = $2; gsub(/[ \t]+$/, "", name)
        split(name, parts, ".")
        pos = (parts[1] == "noun") ? 1 : (parts[1] == "verb") ? 2 : (parts[1] == "adj") ? 3 : 4
        printf "%s\t%s\t%d\n", $1, name, pos
    }' > "$STAGE/lexnames"

lines=$(wc -l < "$STAGE/lexnames")
if [ "$lines" -ne 45 ]; then
    rm -rf "$STAGE"
    echo "error: generated lexnames has $lines lines, expected 45" >&2
    exit 1
fi

rm -rf "$WORDNET"
mv "$STAGE" "$WORDNET"
echo "WordNet 3.0 installed in $WORDNET; set NLTK_DATA=$DEST"
