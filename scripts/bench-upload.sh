#!/usr/bin/env bash
# Upload throughput: our uploader drains COUNT queued 0.5 MB instances into moto_server, and in the
# same run a boto3 script uploads the same files with a thread pool of the same size (the way the
# RSNA Anonymizer uploads). Prints objects/s for each, the ratio, and how often we signed in.
#   scripts/bench-upload.sh [COUNT] [CONCURRENCY]      (default 2000 instances, 8 at a time)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
COUNT=${1:-2000}
CONC=${2:-8}
MOTO_PID=""; NODE_PID=""
bench_workdir upload MOTO_PID NODE_PID
command -v moto_server >/dev/null || { echo "moto_server missing: pip install 'moto[server]'" >&2; exit 1; }
export AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1

bench_build
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$PORT" > "$WORK/moto.log" 2>&1 &
MOTO_PID=$!
URL=http://127.0.0.1:$PORT
until curl -s -o /dev/null "$URL/moto-api/"; do sleep 0.1; done

# Cognito user pool (app client with a secret), user, identity pool, two buckets.
python3 - "$URL" > "$WORK/aws.env" <<'PY'
import sys, boto3
url = sys.argv[1]
idp = boto3.client("cognito-idp", endpoint_url=url)
pool = idp.create_user_pool(PoolName="bench")["UserPool"]["Id"]
client = idp.create_user_pool_client(UserPoolId=pool, ClientName="gw", GenerateSecret=True,
    ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"])["UserPoolClient"]
idp.admin_create_user(UserPoolId=pool, Username="bench", TemporaryPassword="Bench-Pass-1!")
idp.admin_set_user_password(UserPoolId=pool, Username="bench", Password="Bench-Pass-1!", Permanent=True)
ident = boto3.client("cognito-identity", endpoint_url=url)
ip = ident.create_identity_pool(IdentityPoolName="bench", AllowUnauthenticatedIdentities=False,
    CognitoIdentityProviders=[{"ProviderName": f"cognito-idp.us-east-1.amazonaws.com/{pool}", "ClientId": client["ClientId"]}])
s3 = boto3.client("s3", endpoint_url=url)
s3.create_bucket(Bucket="ours"); s3.create_bucket(Bucket="boto3")
print(f"POOL={pool}\nCLIENT={client['ClientId']}\nSECRET={client['ClientSecret']}\nIDPOOL={ip['IdentityPoolId']}")
PY
# shellcheck disable=SC1091
source "$WORK/aws.env"
echo -n "Bench-Pass-1!" > "$WORK/password"

"$TARGET"/release/examples/make-corpus "$WORK/corpus" "$COUNT" 512 10 >/dev/null
cat > "$WORK/config.yaml" <<YAML
project: { name: BENCH, site_id: "972149", script: $PWD/config/default-anonymizer.script }
scp: { host: 127.0.0.1, port: 0 }
upload:
  enabled: true
  region: us-east-1
  account_id: "123456789012"
  user_pool_id: $POOL
  app_client_id: $CLIENT
  client_secret_env: BENCH_CLIENT_SECRET
  identity_pool_id: "$IDPOOL"
  username: bench
  password_env: null
  password_file: $WORK/password
  bucket: ours
  prefix: private
  endpoint_url: $URL
  concurrency: $CONC
  refresh_margin_s: 30
  reconcile_on_start: false
storage: { dir: $WORK/storage, min_free_bytes: 0 }
logging: { level: info }
YAML
# Queue the corpus: the offline command writes the node's layout and queued index rows.
"$BIN" anonymize --config "$WORK/config.yaml" --out "$WORK/storage/public" "$WORK/corpus" > /dev/null
FILES=$(find "$WORK/storage/public" -name '*.dcm' | wc -l)
echo "queued: $FILES instances, $(du -sm "$WORK/storage/public" | cut -f1) MB; concurrency $CONC; $(nproc) cores"

now() { date +%s.%N; }
t0=$(now)
BENCH_CLIENT_SECRET=$SECRET "$BIN" serve --config "$WORK/config.yaml" > "$WORK/node.out" 2> "$WORK/node.log" &
NODE_PID=$!
until "$BIN" queue status --config "$WORK/config.yaml" 2>/dev/null | grep -q "uploaded: $FILES"; do sleep 0.2; done
t1=$(now)
kill "$NODE_PID"; wait "$NODE_PID" || true; NODE_PID=""
OURS=$(echo "$t1 - $t0" | bc -l)
SIGNINS=$(grep -o 'sign_ins=[0-9]*' "$WORK/node.log" | tail -1 | cut -d= -f2 || true)
[ -n "$SIGNINS" ] || { echo "the node did not report its sign-ins:" >&2; tail -20 "$WORK/node.log" >&2; exit 1; }

t0=$(now)
python3 - "$URL" "$WORK/storage/public" "$CONC" <<'PY'
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
url, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=url)
files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".dcm")]
def put(p):
    s3.upload_file(p, "boto3", "private/sub/BENCH/" + os.path.relpath(p, root))
with ThreadPoolExecutor(n) as pool:
    list(pool.map(put, files))
PY
t1=$(now)
THEIRS=$(echo "$t1 - $t0" | bc -l)

printf 'ours  (Cognito, %d at a time): %6.2f s  %7.1f objects/s  sign-ins: %s\n' "$CONC" "$OURS" "$(echo "$FILES / $OURS" | bc -l)" "$SIGNINS"
printf 'boto3 (thread pool of %d):      %6.2f s  %7.1f objects/s\n' "$CONC" "$THEIRS" "$(echo "$FILES / $THEIRS" | bc -l)"
printf 'ratio ours/boto3: %.2fx\n' "$(echo "$THEIRS / $OURS" | bc -l)"
