#!/usr/bin/env bash
# Print the HOST_DATA of a kata-cc pod: the SHA-256 of its base64-DECODED agent policy, which is
# what the key release policy must require as x-ms-sevsnpvm-hostdata.
#
#   ./host-data.sh sidecar.yaml        # YAML after `az confcom katapolicygen -y sidecar.yaml`
#   ./host-data.sh - < policy.b64      # the bare base64 policy on standard input
#
# The annotation is read from the one line katapolicygen writes it on (plain or quoted scalar).
# Note (UNCONFIRMED): newer upstream genpolicy versions gzip the policy before base64; this script
# hashes the decoded bytes as they are, which is what the facts for AKS kata-cc state today.
set -euo pipefail

annotation=io.katacontainers.config.agent.policy

usage() { echo "usage: $0 POD_YAML | -" >&2; exit 2; }
[ "$#" -eq 1 ] || usage

if [ "$1" = "-" ]; then
  policy=$(tr -d ' \t\r\n')
else
  [ -f "$1" ] || { echo "$0: no such file: $1" >&2; exit 2; }
  values=$(sed -n -E "s/^[[:space:]]*[\"']?${annotation//./\\.}[\"']?[[:space:]]*:[[:space:]]*[\"']?([A-Za-z0-9+\/=]+)[\"']?[[:space:]]*$/\1/p" "$1" | sort -u)
  count=$(printf '%s' "$values" | grep -c . || true)
  if [ "$count" -eq 0 ]; then
    echo "$0: $1 has no $annotation annotation; run: az confcom katapolicygen -y $1" >&2
    exit 1
  fi
  if [ "$count" -gt 1 ]; then
    echo "$0: $1 holds $count different policies; split the file per workload" >&2
    exit 1
  fi
  policy=$values
fi

[ -n "$policy" ] || { echo "$0: empty policy" >&2; exit 1; }
if ! decoded_hash=$(printf '%s' "$policy" | base64 --decode | sha256sum); then
  echo "$0: the policy is not valid base64" >&2
  exit 1
fi
echo "${decoded_hash%% *}"
