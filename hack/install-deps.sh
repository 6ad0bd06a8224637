#!/usr/bin/env bash
# Installs the third-party services the integration tests run against:
# Debian packages (Prometheus, RabbitMQ, PostgreSQL, nginx, wrk, openssl) and
# moto (the AWS API emulator) in a cached Python virtualenv. Idempotent: what
# is already installed is skipped.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(prometheus rabbitmq-server postgresql postgresql-contrib nginx wrk openssl curl)
MOTO_VERSION="${LEVEE_MOTO_VERSION:-5.2.5}"

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  # The tests start each service themselves, on loopback ports of their own:
  # keep the packages' init scripts from starting system-wide copies.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e $policy ] && had_policy=1
  if ((!had_policy)); then printf '#!/bin/sh\nexit 101\n' | as_root tee $policy >/dev/null; as_root chmod +x $policy; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ((had_policy)) || as_root rm -f $policy
else
  log "Debian packages present"
fi

venv="$CACHE_DIR/venv-moto-$MOTO_VERSION"
if [ ! -x "$venv/bin/moto_server" ]; then
  log "installing moto $MOTO_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto[server,ecs,rds]==$MOTO_VERSION"
else
  log "moto $MOTO_VERSION present"
fi
