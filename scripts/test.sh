#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the real peers the tests talk to
# (DCMTK, dicom3tools, Orthanc with DICOMweb, PostgreSQL and HAProxy, Chromium for the status page, openssl for test certificates, Tesseract and
# DejaVu for burned-in text, moto_server for Cognito and S3, the pip packages whose DICOM files
# make the variety corpus), then runs cargo test. Tests never skip a missing peer: they fail loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in /usr/bin/dcmdump /usr/bin/storescu /usr/bin/echoscu /usr/bin/storescp /usr/bin/dcmqrscp; do [ -x "$tool" ] || missing+=(dcmtk); done
[ -x /usr/bin/dciodvfy ] || missing+=(dicom3tools)
# The status page is tested in a real browser.
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The TLS tests make their CA and certificates with the openssl command.
[ -x /usr/bin/openssl ] || missing+=(openssl)
# Burned-in text: the node reads pixels with Tesseract; the tests draw text with DejaVu and
# compress images with DCMTK's dcmcrle and dcmcjpeg.
[ -x /usr/bin/tesseract ] || missing+=(tesseract-ocr)
[ -f /usr/share/tesseract-ocr/5/tessdata/eng.traineddata ] || missing+=(tesseract-ocr-eng)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ] || missing+=(fonts-dejavu-core)
# JPEG 2000 test images are coded by OpenJPEG's own encoder.
[ -x /usr/bin/opj_compress ] || missing+=(libopenjp2-tools)
# STOW-RS is tested against Orthanc with its DICOMweb plugin, sending and receiving; curl sends
# bodies by hand.
[ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ -x /usr/bin/curl ] || missing+=(curl)
# The PHI index on PostgreSQL: tests/postgres.rs starts Debian's server (as the postgres user
# when run as root, through setpriv) in a temp directory and queries it with psql; HAProxy
# stands in front of two nodes; docker-compose (1.29, Debian's) checks the worked example in
# docker/several-nodes/ with `docker-compose config`, which needs no Docker daemon.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
[ -x /usr/bin/psql ] || missing+=(postgresql-client)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
[ -x /usr/bin/docker-compose ] || missing+=(docker-compose)
# tests/faults.rs builds a failing device: a loop device, ext4 and a tmpfs (mount, losetup).
[ -x /usr/sbin/mkfs.ext4 ] || missing+=(e2fsprogs)
[ -x /sbin/losetup ] || [ -x /usr/sbin/losetup ] || missing+=(mount)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

# pip puts console scripts in the interpreter's scripts directory; a pyenv shim for a new one
# appears only after `pyenv rehash`, so put that directory on PATH as well.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
if ! command -v moto_server >/dev/null 2>&1; then
    echo "installing: moto[server]" >&2
    python3 -m pip install --quiet 'moto[server]'
    hash -r
fi
command -v moto_server >/dev/null || { echo "moto_server is not on PATH after installing moto[server]" >&2; exit 1; }
# tests/variety.rs runs the anonymizer over DICOM files other people wrote, shipped inside these
# packages (tests/variety/corpus.py copies them; nothing is downloaded at test time). The versions
# its bounds were measured with: another release may ship other files.
variety=()
for pkg in pydicom:pydicom==3.0.2 pynetdicom:pynetdicom==3.0.4 deid_data:deid-data==0.0.20 dicomgenerator:dicomgenerator==0.4.0; do
    python3 -c "import ${pkg%%:*}" 2>/dev/null || variety+=("${pkg#*:}")
done
if [ ${#variety[@]} -gt 0 ]; then
    echo "installing: ${variety[*]}" >&2
    python3 -m pip install --quiet "${variety[@]}"
fi

# The AWS SDK must never probe the instance metadata service from a test.
export AWS_EC2_METADATA_DISABLED=true
# DCMTK leaves Nagle on unless told otherwise; small PDUs then stall for 40 ms each.
export TCP_NODELAY=1
# Every test binary runs even after a failure, so one flake hides nothing.
cargo test --all-targets --no-fail-fast "$@"
