#!/usr/bin/env bash
# Delete the kind cluster deploy/kind/up.sh created (everything in it goes: KFP, SeaweedFS data, runs).
#   deploy/kind/down.sh
#   CLUSTER_NAME=other deploy/kind/down.sh
set -euo pipefail

CLUSTER_NAME="${CLUSTER_NAME:-semcode}"

command -v kind >/dev/null 2>&1 || { echo "down.sh: error: kind not found" >&2; exit 1; }
if kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; then
  kind delete cluster --name "${CLUSTER_NAME}"
else
  echo "down.sh: no kind cluster named ${CLUSTER_NAME}; nothing to do" >&2
fi
