#!/bin/sh
# Generates ./configure and the Makefile templates; nothing it writes is committed.
set -e
cd "$(dirname "$0")"
autoreconf --install --force
