#!/usr/bin/env bash
# Assembles the pullsecret-injector image from the release binary without a Docker engine,
# and pushes it: `make image IMAGE_REGISTRY=127.0.0.1:5000`.
#
#   image/build.sh --registry HOST[:PORT] [--repository NAME] [--tag TAG] [--binary PATH]
#
# The image is the Dockerfile's, built another way:
# - base layer: the runtime files of gcr.io/distroless/cc-debian12 that the binary uses, from
#   pinned Debian 12 packages (BASE_DEBS below, fetched with `apt-get download`, unpacked with
#   `dpkg-deb -x`): glibc and libgcc_s, the CA bundle, /etc/passwd and /etc/group with
#   nonroot (65532), /etc/nsswitch.conf, /etc/os-release, /tmp, /home/nonroot;
# - app layer: the binary at /pullsecret-injector;
# - config: LABEL, USER, EXPOSE, ENTRYPOINT and CMD read from the Dockerfile's final stage.
# The layers are written with fixed owners and times, so the same inputs give the same digest.
# crane (tests/registry/build.sh) pushes them; it finds credentials in $DOCKER_CONFIG
# (default ~/.docker/config.json) and trusts the CAs in $SSL_CERT_FILE as well as the system's.
# Prints the image reference with its digest on the last line of stdout.
set -euo pipefail

# Debian 12 (bookworm) packages: name=version. A point release retires old versions:
# `apt-cache policy NAME` shows what Debian serves now.
BASE_DEBS=(
    libc6=2.36-9+deb12u14
    libgcc-s1=12.2.0-14+deb12u1
    ca-certificates=20230311+deb12u1
    netbase=6.4
    base-files=12.4+deb12u15
)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
debs="$repo/.cache/image/debs"
# One directory per run: the tests may build while another build is under way.
work="$repo/target/image/build-$$"
crane="$repo/.cache/registry/bin/crane"

registry=""
repository="pullsecret-injector"
tag="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)"
binary="$repo/target/release/pullsecret-injector"

build_name=image
# shellcheck source=../tests/build-lib.sh
source "$repo/tests/build-lib.sh"
usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case "$1" in
    --registry) registry="${2:?--registry needs HOST[:PORT]}" && shift ;;
    --repository) repository="${2:?--repository needs a name}" && shift ;;
    --tag) tag="${2:?--tag needs a tag}" && shift ;;
    --binary) binary="${2:?--binary needs a path}" && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && die "unknown argument: $1" ;;
    esac
    shift
done
[[ -n "$registry" ]] || die "--registry HOST[:PORT] is required (make image IMAGE_REGISTRY=127.0.0.1:5000)"
[[ -x "$binary" ]] || die "$binary not found: build it with 'make build'"
for tool in apt-get dpkg-deb jq tar; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (Debian: apt-get install $tool)"
done
"$repo/tests/registry/build.sh" >&2
reference="$registry/$repository:$tag"

# ---------------------------------------------------------------------------------------
# The Dockerfile's final stage: its LABEL, USER, EXPOSE, ENTRYPOINT and CMD become the
# image config. Continuation lines are joined first.
# ---------------------------------------------------------------------------------------
final_stage="$(
    sed -e ':join' -e '/\\$/{N;s/\\\n[[:space:]]*/ /;b join' -e '}' "$repo/Dockerfile" |
        awk '/^FROM /{stage=""} {stage = stage $0 "\n"} END {printf "%s", stage}'
)"
# Anything else in the final stage would be lost here: refuse it, so the two images cannot
# drift apart unnoticed.
while read -r keyword args; do
    case "$keyword" in
    "" | \#*) ;;
    FROM) [[ "$args" == gcr.io/distroless/cc-debian12* ]] ||
        die "Dockerfile: the runtime base is now $args; the base layer here copies gcr.io/distroless/cc-debian12: update ${BASH_SOURCE[0]}" ;;
    COPY) [[ "$args" == *" /pullsecret-injector" ]] ||
        die "Dockerfile: COPY $args: only the binary at /pullsecret-injector is carried over: update ${BASH_SOURCE[0]}" ;;
    LABEL | USER | EXPOSE | ENTRYPOINT | CMD) ;;
    *) die "Dockerfile: $keyword in the final stage is not carried over by ${BASH_SOURCE[0]}: teach it, or move it" ;;
    esac
done <<<"$final_stage"
instruction() { # instruction NAME: the arguments of every NAME line of the final stage
    sed -n "s/^$1[[:space:]]\{1,\}//p" <<<"$final_stage"
}
json_array_args() { # json_array_args NAME FLAG: "FLAG=a,b" from `NAME ["a", "b"]`
    local json
    json="$(instruction "$1")"
    [[ "$(wc -l <<<"$json")" == 1 && "$json" == \[* ]] || die "Dockerfile: expected one $1 in JSON form, found: $json"
    jq -e 'all(.[]; type == "string" and (contains(",") | not))' <<<"$json" >/dev/null ||
        die "Dockerfile: $1 must be a JSON array of strings without commas (crane splits on them): $json"
    echo "$2=$(jq -r 'join(",")' <<<"$json")"
}
config_args=()
config_args+=("$(json_array_args ENTRYPOINT --entrypoint)")
config_args+=("$(json_array_args CMD --cmd)")
user="$(instruction USER)"
[[ -n "$user" ]] || die "Dockerfile: no USER in the final stage"
config_args+=(--user="$user")
for port in $(instruction EXPOSE); do
    [[ "$port" == */* ]] || port="$port/tcp"
    config_args+=(--exposed-ports="$port")
done
# LABEL k="v" k2="v2": xargs splits on blanks outside quotes and removes the quotes.
while IFS= read -r label; do
    [[ "$label" == *=* ]] || die "Dockerfile: cannot read LABEL entry: $label"
    config_args+=(--label="$label")
done < <(instruction LABEL | xargs -n1 printf '%s\n')

# ---------------------------------------------------------------------------------------
# Base layer.
# ---------------------------------------------------------------------------------------
mkdir -p "$debs"

rm -rf "$work"
mkdir -p "$work/unpacked"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{etc/ssl/certs,lib,lib64,tmp,root,home/nonroot,var/lib/dpkg/status.d,usr/share/doc}
for pin in "${BASE_DEBS[@]}"; do
    name="${pin%%=*}"
    file="$(deb_file "$debs" "$pin")"
    dpkg-deb -x "$file" "$work/unpacked/$name"
    # Like distroless: each package's control record, for scanners, and its copyright.
    dpkg-deb -f "$file" >"$rootfs/var/lib/dpkg/status.d/$name"
    if [[ -f "$work/unpacked/$name/usr/share/doc/$name/copyright" ]]; then
        install -D -m 0644 "$work/unpacked/$name/usr/share/doc/$name/copyright" "$rootfs/usr/share/doc/$name/copyright"
    fi
done
# Shared libraries and the dynamic loader; glibc's gconv modules (iconv) stay out: Rust never
# calls iconv.
cp -a "$work/unpacked/libc6/lib/." "$rootfs/lib/"
cp -a "$work/unpacked/libc6/lib64/." "$rootfs/lib64/"
cp -a "$work/unpacked/libgcc-s1/lib/." "$rootfs/lib/"
# update-ca-certificates builds the bundle at install time; the same concatenation here.
find "$work/unpacked/ca-certificates/usr/share/ca-certificates/mozilla" -name '*.crt' -print0 |
    LC_ALL=C sort -z | xargs -0 cat >"$rootfs/etc/ssl/certs/ca-certificates.crt"
cp "$work/unpacked/netbase/etc/"{protocols,services,ethertypes} "$rootfs/etc/"
cp "$work/unpacked/base-files/usr/lib/os-release" "$rootfs/etc/os-release"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
EOF
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
chmod 0755 "$rootfs" "$rootfs"/{etc,lib,lib64,usr,var}
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root" "$rootfs/home/nonroot"

# Every library the binary needs must be in the layer: the loader named in the binary, and
# each NEEDED entry under /lib/x86_64-linux-gnu. Symlinks are followed inside the rootfs (the
# loader's is absolute, and would otherwise resolve on this machine).
in_rootfs() { # in_rootfs PATH: whether PATH exists in the rootfs
    local path="$1" target
    for _ in 1 2 3 4 5 6 7 8; do
        if [[ -L "$rootfs$path" ]]; then
            target="$(readlink "$rootfs$path")"
            [[ "$target" == /* ]] || target="$(dirname "$path")/$target"
            path="$target"
        else
            [[ -f "$rootfs$path" ]]
            return
        fi
    done
    return 1
}
interpreter="$(readelf -l "$binary" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')"
[[ -n "$interpreter" ]] || die "$binary names no program interpreter: not a dynamically linked ELF?"
in_rootfs "$interpreter" || die "the binary's loader $interpreter is not in the base layer"
for lib in $(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    in_rootfs "/lib/x86_64-linux-gnu/$lib" || die "the binary needs $lib, which the base layer lacks"
done

# Fixed owners, modes and times; /home/nonroot belongs to nonroot, as in distroless.
layer_tar() { # layer_tar OUTPUT DIR [tar options...]
    local output="$1" dir="$2"
    shift 2
    tar --create --file "$output" --directory "$dir" --sort=name --mtime=@0 --numeric-owner \
        --owner=0 --group=0 --format=gnu "$@" .
}
layer_tar "$work/base.tar" "$rootfs" --exclude=./home/nonroot
tar --append --file "$work/base.tar" --directory "$rootfs" --mtime=@0 --numeric-owner \
    --owner=65532 --group=65532 --format=gnu ./home/nonroot

mkdir -p "$work/app"
install -m 0755 "$binary" "$work/app/pullsecret-injector"
layer_tar "$work/app.tar" "$work/app"

# ---------------------------------------------------------------------------------------
# Push: the layers on an empty OCI base, then the config from the Dockerfile.
# ---------------------------------------------------------------------------------------
echo "image: pushing $reference" >&2
"$crane" append --oci-empty-base --new_layer "$work/base.tar" --new_layer "$work/app.tar" \
    --new_tag "$reference" >/dev/null
digest_ref="$("$crane" mutate "$reference" --tag "$reference" --set-platform linux/amd64 "${config_args[@]}")"
manifest="$("$crane" manifest "$digest_ref")"
compressed=$(jq '[.config.size, (.layers[].size)] | add' <<<"$manifest")
uncompressed=$(du -sb --apparent-size "$work/base.tar" "$work/app.tar" | awk '{s += $1} END {print s}')
echo "image: $digest_ref: $compressed bytes compressed ($((compressed / 1024)) KiB), $uncompressed bytes of layers ($((uncompressed / 1024 / 1024)) MiB)" >&2
echo "$digest_ref"
