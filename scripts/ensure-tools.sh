#!/usr/bin/env bash
# Install the Debian tools the test suite drives when they are missing (CI runs as root on a fresh machine):
#   faketime     - runs a worker with a skewed clock (tests/reliability)
#   spamassassin - scores the course emails offline (tests/content/test_ketamine_spam.py)
# Quiet, and never fatal: a test that needs a missing tool fails with CI=true and is skipped locally.
set -u
missing=()
for pair in "faketime:faketime" "spamassassin:spamassassin"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "not installing ${missing[*]}: needs root and apt-get; the tests that use them will say so" >&2
  exit 0
fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || echo "apt-get install ${missing[*]} failed" >&2
exit 0
