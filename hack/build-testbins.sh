#!/usr/bin/env bash
# Builds etcd, kube-apiserver and helm from the Go module proxy into
# $CACHE_DIR/bin/<component>-<version>/, skipping whatever is already built.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/*
# staging modules with local paths. A small wrapper module requires it and
# replaces each staging module with its published v0.Y.Z tag instead.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_etcd() {
  local out="$CACHE_DIR/bin/etcd-$ETCD_VERSION"
  if [ -x "$out/etcd" ]; then log "etcd $ETCD_VERSION cached"; return; fi
  log "building etcd $ETCD_VERSION (first time only)"
  local mod="$CACHE_DIR/src/etcd-$ETCD_VERSION"
  rm -rf "$mod"; mkdir -p "$mod" "$out.tmp"
  (
    cd "$mod"
    go mod init levee.dev/testbins/etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" >/dev/null
    go build -trimpath -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
    go build -trimpath -o "$out.tmp/etcdctl" go.etcd.io/etcd/etcdctl/v3
  )
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# The wrapper module that builds commands of k8s.io/kubernetes (kube-apiserver, kubectl).
kube_module() {
  local mod="$CACHE_DIR/src/kube-$KUBE_VERSION"
  if [ -f "$mod/.ready" ]; then echo "$mod"; return; fi
  local staging_version="v0.${KUBE_VERSION#v1.}"
  rm -rf "$mod"; mkdir -p "$mod"
  (
    cd "$mod"
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    # Every `k8s.io/NAME => ./staging/...` replace in kubernetes' go.mod.
    local staging
    staging=$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u)
    [ -n "$staging" ] || die "found no staging modules in $gomod"
    {
      echo "module levee.dev/testbins/kube"
      echo
      echo "go $(awk '/^go /{print $2; exit}' "$gomod")"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      echo "replace ("
      for m in $staging; do echo "	$m => $m $staging_version"; done
      echo ")"
    } >go.mod
    log "$(echo "$staging" | wc -l) staging modules replaced with $staging_version"
    # The imports go in before the first tidy: a tidy with nothing importing k8s.io/kubernetes
    # drops its requirement, and the next one would resolve the import to the latest
    # release instead of $KUBE_VERSION.
    cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod tidy -e >/dev/null 2>&1 || true
    local got
    got=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
    [ "$got" = "$KUBE_VERSION" ] || die "the wrapper module resolved k8s.io/kubernetes to $got, not $KUBE_VERSION"
  ) >&2
  touch "$mod/.ready"
  echo "$mod"
}

# build_kube_cmd NAME: builds k8s.io/kubernetes/cmd/NAME into $CACHE_DIR/bin/kube-$KUBE_VERSION/.
build_kube_cmd() {
  local name=$1 out="$CACHE_DIR/bin/kube-$KUBE_VERSION"
  if [ -x "$out/$name" ]; then log "$name $KUBE_VERSION cached"; return; fi
  log "building $name $KUBE_VERSION (first time only; 10-20 minutes on 2 cores for the first one)"
  local mod minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  mod=$(kube_module)
  mkdir -p "$out"
  (
    cd "$mod"
    local ld=""
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    done
    go build -trimpath -ldflags "$ld" -o "$out/$name.tmp" "k8s.io/kubernetes/cmd/$name"
  )
  mv "$out/$name.tmp" "$out/$name"
}

# helm renders charts/levee for the end-to-end test of the chart's RBAC.
build_helm() {
  local out="$CACHE_DIR/bin/helm-$HELM_VERSION"
  if [ -x "$out/helm" ]; then log "helm $HELM_VERSION cached"; return; fi
  log "building helm $HELM_VERSION (first time only)"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  GOBIN="$out.tmp" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

mkdir -p "$CACHE_DIR/bin"
# The binaries are what is kept; Go's build cache for them is some 3 GB that nothing reuses,
# so the builds get a cache of their own that goes when they are done.
GOCACHE=$(mktemp -d "${TMPDIR:-/tmp}/levee-gocache.XXXXXX")
export GOCACHE
trap 'chmod -R u+w "$GOCACHE" 2>/dev/null; rm -rf "$GOCACHE"' EXIT
build_etcd
build_kube_cmd kube-apiserver
build_kube_cmd kubectl
build_helm
"$CACHE_DIR/bin/kube-$KUBE_VERSION/kube-apiserver" --version
"$CACHE_DIR/bin/kube-$KUBE_VERSION/kubectl" version --client | sed -n 1p
# sed reads to the end; `head` could exit first and kill etcd with SIGPIPE under pipefail.
"$CACHE_DIR/bin/etcd-$ETCD_VERSION/etcd" --version | sed -n 1p
"$CACHE_DIR/bin/helm-$HELM_VERSION/helm" version --short
