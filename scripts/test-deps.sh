#!/usr/bin/env bash
# Install the npm packages the test suite reads (OpenAPI description, webhook examples,
# webhook signing reference) into .cache/npm. Idempotent: does nothing when the pinned
# versions are already present.
set -euo pipefail

cd "$(dirname "$0")/.."
prefix=.cache/npm
packages=(
  "@octokit/openapi@23.0.2"
  "@octokit/webhooks-examples@7.6.1"
  "@octokit/webhooks-methods@6.0.0"
  # The real CLI, for the stand-in's own tests on the host (the agent image has its own copy).
  "@anthropic-ai/claude-code@2.1.332"
)

installed_version() {
  # $1 = package name; prints the installed version or nothing
  local manifest="$prefix/node_modules/$1/package.json"
  [[ -f "$manifest" ]] || return 0
  node -e 'process.stdout.write(require(process.argv[1]).version)' "$PWD/$manifest"
}

missing=0
for spec in "${packages[@]}"; do
  name="${spec%@*}"
  want="${spec##*@}"
  if [[ "$(installed_version "$name")" != "$want" ]]; then
    missing=1
  fi
done

if [[ "$missing" == 0 ]]; then
  echo "test-deps: npm packages already present in $prefix"
  exit 0
fi

mkdir -p "$prefix"
npm install --no-audit --no-fund --prefix "$prefix" "${packages[@]}"
echo "test-deps: installed ${packages[*]} into $prefix"
