"""Real-world command lines, what redaction must cut from them and what it must keep.

Shared by the redaction's own tests (tests/device/alerts/test_redact.py) and the test that runs them
through the component's alert path (tests/device/test_agent_redaction.py). Every secret here is made up;
the wallet addresses are published examples (Monero's donation address, the Bitcoin "boat" address, an
Ethereum address), which is what a wallet is: public.
"""

from __future__ import annotations

from dataclasses import dataclass

MONERO_WALLET = (
    "48edfHu7V9Z84YzzMa6fUueoELZ9ZRXq9VetWzYGzKt52XU5xvqgzYnDK9URnRoJMk1j8nLwEVsaSWJ4fhdUyZijBGUicoD"
)
BITCOIN_WALLET = "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"
ETHEREUM_WALLET = "0x32Be343B94f860124dC4fEe278FDCBD38C102D88"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documentation example
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXZpY2UtMTIifQ.Xk3fTq9LmZ2pW8rV5nB7yC1dH4jS6gA0"
# What the configuration adds in the tests (EvidenceRedactPatterns): a company's own licence keys.
EXTRA_PATTERN = r"corp-lic-[A-Z0-9]{12}"


@dataclass(frozen=True)
class Row:
    cmdline: str
    cut: tuple[str, ...] = ()  # must not survive
    kept: tuple[str, ...] = ()  # must survive as written
    kinds: tuple[str, ...] = ()  # what the evidence says was cut


ROWS = (
    # database clients
    Row(
        "mysql -h db.internal -u app -pMyS3cretPw app_db",
        cut=("MyS3cretPw",),
        kept=("mysql -h db.internal -u app -p", " app_db"),
        kinds=("secret-option",),
    ),
    Row("mysql -u root -p app_db", kept=("mysql -u root -p app_db",)),  # -p alone: mysql prompts
    Row(
        "mysqldump --user=backup --password=Dump!Pass42 --all-databases",
        cut=("Dump!Pass42",),
        kept=("--user=backup --password=", "--all-databases"),
        kinds=("secret-option",),
    ),
    Row(
        "psql -h 10.0.0.5 -p 5432 -U reporter postgresql://reporter:Pg-R3port@10.0.0.5/sales",
        cut=("Pg-R3port",),
        kept=("-p 5432 -U reporter postgresql://reporter:", "@10.0.0.5/sales"),
        kinds=("url-password",),
    ),
    Row(
        "env PGPASSWORD=pgEnvSecret psql -h db -U app",
        cut=("pgEnvSecret",),
        kept=("env PGPASSWORD=", "psql -h db -U app"),
        kinds=("secret-assignment",),
    ),
    Row(
        "redis-cli -h cache.local -p 6379 -a R3dis#Auth PING",
        cut=("R3dis#Auth",),
        kept=("-p 6379 -a ", " PING"),
        kinds=("secret-option",),
    ),
    Row(
        "mongodump -u admin -p M0ngoDumpPw --authenticationDatabase admin",
        cut=("M0ngoDumpPw",),
        kept=("--authenticationDatabase admin",),
        kinds=("secret-option",),
    ),
    Row(
        "sshpass -p SshPass99 ssh -p 2222 deploy@edge-01",
        cut=("SshPass99",),
        kept=("ssh -p 2222 deploy@edge-01",),
        kinds=("secret-option",),
    ),
    Row(
        "sqlcmd -S tcp:sql01,1433 -U sa -P SqlServerPw1 -Q SELECT 1",
        cut=("SqlServerPw1",),
        kept=("-U sa -P ", "-Q SELECT 1"),
        kinds=("secret-option",),
    ),
    Row(
        "mosquitto_pub -h broker.local -u sensor -P MqttPw77 -t telemetry -m 42",
        cut=("MqttPw77",),
        kept=("-u sensor", "-t telemetry -m 42"),
        kinds=("secret-option",),
    ),
    # HTTP clients
    Row(
        "curl -u admin:CurlPw123 https://nexus.example.com/repository/",
        cut=("CurlPw123",),
        kept=("-u admin:", "https://nexus.example.com/repository/"),
        kinds=("secret-option",),
    ),
    Row(
        f"curl -sS -H Authorization: Bearer {JWT} https://api.example.com/v1/jobs",
        cut=(JWT, JWT.split(".")[2]),
        kept=("-H Authorization: Bearer ", "https://api.example.com/v1/jobs"),
        kinds=("auth-header",),
    ),
    Row(
        "curl -H X-API-Key:0f3c9a7e5b1d https://api.example.com/v2/status",
        cut=("0f3c9a7e5b1d",),
        kept=("X-API-Key:", "https://api.example.com/v2/status"),
        kinds=("auth-header",),
    ),
    Row(
        "wget --user=ci --password=WgetPw1 https://artifacts.example.com/model.onnx",
        cut=("WgetPw1",),
        kept=("--user=ci", "https://artifacts.example.com/model.onnx"),
        kinds=("secret-option",),
    ),
    Row(
        "curl https://models.s3.amazonaws.com/yolo.onnx?X-Amz-Expires=3600"
        "&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEJrTokenPartIsHere&X-Amz-Signature=4f2a9c0d1e",
        cut=("IQoJb3JpZ2luX2VjEJrTokenPartIsHere", "4f2a9c0d1e"),
        kept=("https://models.s3.amazonaws.com/yolo.onnx?X-Amz-Expires=3600",),
        kinds=("secret-assignment",),
    ),
    Row(
        "git clone https://oauth2:glpat-AbCdEf1234567890xYzW@gitlab.example.com/team/app.git",
        cut=("glpat-AbCdEf1234567890xYzW", "AbCdEf1234567890xYzW"),
        kept=("https://oauth2:", "@gitlab.example.com/team/app.git"),
        kinds=("url-password",),
    ),
    # cloud command lines
    Row(
        f"aws configure set aws_secret_access_key {AWS_SECRET}",
        cut=(AWS_SECRET, "bPxRfiCYEXAMPLEKEY"),
        kept=("aws configure set aws_secret_access_key ",),
        kinds=("secret-option",),
    ),
    Row(
        f"env AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY={AWS_SECRET} "
        "aws s3 sync s3://models/ /opt/models",
        cut=(AWS_SECRET,),
        kept=("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY=", "s3://models/ /opt/models"),
        kinds=("secret-assignment",),
    ),
    Row(
        'aws secretsmanager create-secret --name prod/db --secret-string {"password":"Sm-Pa55"}',
        cut=("Sm-Pa55",),
        kept=("--name prod/db --secret-string ",),
        kinds=("secret-option",),
    ),
    Row(
        "az login --service-principal -u 1b2c3d4e-app -p AzSpSecret9 --tenant contoso.onmicrosoft.com",
        cut=("AzSpSecret9",),
        kept=("-u 1b2c3d4e-app", "--tenant contoso.onmicrosoft.com"),
        kinds=("secret-option",),
    ),
    Row(
        "az storage blob upload --account-name edgelogs "
        "--account-key Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg== --file log.tgz",
        cut=("Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg",),
        kept=("--account-name edgelogs", "--file log.tgz"),
        kinds=("secret-option",),
    ),
    Row(
        "gcloud auth activate-service-account ci@proj.iam.gserviceaccount.com --key-file=/etc/gcp/key.json",
        kept=("ci@proj.iam.gserviceaccount.com --key-file=/etc/gcp/key.json",),
    ),
    Row(
        "docker login -u ci -p DockerPw1 registry.example.com",
        cut=("DockerPw1",),
        kept=("docker login -u ci -p ", " registry.example.com"),
        kinds=("secret-option",),
    ),
    Row("docker run --gpus all -p 8080:80 nvcr.io/nvidia/tritonserver:24.01-py3", kept=("-p 8080:80",)),
    Row(
        f"kubectl --token={JWT} get pods -n edge",
        cut=(JWT.split(".")[1],),
        kept=("kubectl --token=", " get pods -n edge"),
        kinds=("secret-option",),
    ),
    Row(
        "helm upgrade app ./chart --set db.password=HelmPw1,db.user=app",
        cut=("HelmPw1",),
        kept=("--set db.password=", ",db.user=app"),
        kinds=("secret-assignment",),
    ),
    # applications
    Row(
        "java -Djavax.net.ssl.keyStorePassword=changeit -jar /opt/app/app.jar",
        cut=("changeit",),
        kept=("-Djavax.net.ssl.keyStorePassword=", "-jar /opt/app/app.jar"),
        kinds=("secret-assignment",),
    ),
    Row(
        "python3 /opt/app/infer.py --model /models/yolo.onnx "
        "--hf-token hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        cut=("hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",),
        kept=("/opt/app/infer.py --model /models/yolo.onnx --hf-token ",),
        kinds=("secret-option",),
    ),
    Row(
        "/usr/local/bin/fleet-agent --register 7Hq2Lm9XcV4bN8kP3sR6tY1wZ5aD0fGj --region eu-west-1",
        cut=("7Hq2Lm9XcV4bN8kP3sR6tY1wZ5aD0fGj",),
        kept=("/usr/local/bin/fleet-agent --register ", " --region eu-west-1"),
        kinds=("token",),
    ),
    Row(
        "openssl pkcs12 -export -in cert.pem -inkey key.pem -passout pass:P12Export -out edge.p12",
        cut=("P12Export",),
        kept=("-inkey key.pem -passout ", " -out edge.p12"),
        kinds=("secret-option",),
    ),
    Row(
        "nmcli device wifi connect Warehouse-5G password WifiPw2024",
        cut=("WifiPw2024",),
        kept=("connect Warehouse-5G password ",),
        kinds=("secret-option",),
    ),
    Row(
        "license-agent --serial corp-lic-AB12CD34EF56 --offline",
        cut=("corp-lic-AB12CD34EF56",),
        kept=("license-agent --serial ", " --offline"),
        kinds=("pattern",),
    ),
    # what an operator needs and no rule may cut
    Row(
        "ctr images pull docker.io/library/nginx@sha256:"
        "0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31",
        kept=("nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31",),
    ),
    Row(
        "ssh -p 2222 -i /home/pi/.ssh/id_ed25519 -o StrictHostKeyChecking=no pi@edge-07",
        kept=("ssh -p 2222 -i /home/pi/.ssh/id_ed25519 -o StrictHostKeyChecking=no pi@edge-07",),
    ),
    Row(
        "/usr/bin/python3 -m uvicorn app:main --port 8000 --workers 2 --log-level info",
        kept=("/usr/bin/python3 -m uvicorn app:main --port 8000 --workers 2 --log-level info",),
    ),
    # miners: the pool, the wallet and the worker's password are evidence
    Row(
        f"xmrig -o stratum+tcp://pool.supportxmr.com:3333 -u {MONERO_WALLET} -p x -k --donate-level=1",
        kept=(
            f"xmrig -o stratum+tcp://pool.supportxmr.com:3333 -u {MONERO_WALLET} -p x -k --donate-level=1",
        ),
    ),
    Row(
        f"/tmp/.x/kworker -o stratum+ssl://{MONERO_WALLET}.rig7:x@gulf.moneroocean.stream:20128 --pass=rig7 "
        "--http-access-token=XmrigApi1",
        cut=("XmrigApi1",),
        kept=(f"stratum+ssl://{MONERO_WALLET}.rig7:x@gulf.moneroocean.stream:20128 --pass=rig7",),
        kinds=("secret-option",),
    ),
    Row(
        f"t-rex -a ethash -o stratum+tcp://eth.2miners.com:2020 -u {ETHEREUM_WALLET} -p x -w rig01",
        kept=(f"-u {ETHEREUM_WALLET} -p x -w rig01",),
    ),
    Row(
        f"cpuminer -a sha256d -o stratum+tcp://pool.example.net:3333 -u {BITCOIN_WALLET} -p c=BTC",
        kept=(f"-u {BITCOIN_WALLET} -p c=BTC",),
    ),
)
