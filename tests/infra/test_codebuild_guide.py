"""docs/codebuild.md followed from top to bottom, as a new user would: its commands, verbatim.

Every bash block of sections 2 to 4 runs, in order, from the root of a copy of the repository
(a git clone of its own): section 2's blocks in one shell session (the guide asks for one), every
later block in a fresh one (each must stand on its own), all with ``set -euo pipefail``, in the
shell of guide_shell.GuideShell: ``registry-proxy``, ``jq``, ``git`` and the CDK CLI are the real
ones, ``deploy`` is synthesized instead, and the real AWS CLI gets answers made up in place of
AWS's. The one block not run is 2.1's (the virtualenv: the test's own interpreter has the
packages). The guide's example values are what the blocks use; the Docker
Hub user and token are typed in on stdin.

Then every "deployed" template is checked against what the guide says it deploys: the first
deploy's internal load balancer, name and certificate; the internet-facing listener with mutual
authentication in verify mode, its trust store holding the ``ca.pem`` that ``registry-proxy certs
init-ca`` wrote, no revocation while the list is empty, the list as ``certs revoke`` wrote it
after a revoke, the CodeBuild ranges of the region as the allow-list; the builds' security group
admitted; the outputs the guide reads.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from support import markdown

from .conftest import missing
from .guide_shell import Deploy, GuideShell
from .scenarios import FIXTURES

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "codebuild.md"
FIRST_DEPLOY = "2. The stack (both set-ups)"
OUTSIDE = "3. Outside any VPC: mutual TLS"
INSIDE = "4. Inside a VPC: the internal load balancer"
NOT_RUN = {"2.1 Tools": "the virtualenv and the packages: the test's interpreter has them"}
# what the reader types at the Docker Hub prompts of 2.4
HUB_USER, HUB_TOKEN = "hub-reader", "dckr_pat_stand-in-token"

# The guide's example values
STACK = "RegistryProxy"
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # the aws stand-in's
DOMAIN = "registry.build.example.com"
INTERNET_DOMAIN = "registry-ext.build.example.com"
PROJECT, NAME = "my-service-build", "my-service"
# what the aws stand-in answers for the stack's VPC: its private subnets, the builds' group
BUILD_SG = "sg-0123456789abcdef0"
SUBNETS = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"]


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def bash_blocks(title: str) -> list[str]:
    """The bash blocks directly under ``title``, not those of its subsections."""
    text = guide()
    body = markdown.section(text, title)
    for subsection in markdown.subsections(text, title):
        body = body.replace(markdown.section(text, subsection), "")
    return markdown.code_blocks(body, "bash")


def sections_with_commands() -> list[str]:
    """Sections 2 to 4 and their subsections, in the guide's order, that hold bash blocks."""
    titles = []
    for top in (FIRST_DEPLOY, OUTSIDE, INSIDE):
        titles += [top, *markdown.subsections(guide(), top)]
    return [title for title in titles if bash_blocks(title)]


def repository_copy(directory: Path) -> Path:
    """The repository's files (committed or not, ignored ones left out) in a git clone of
    their own, as a reader's clone would be."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return directory


@dataclass
class Walk:
    """What following the guide did: the shell (its stand-ins' records), the clone, and what
    each section's blocks printed."""

    shell: GuideShell
    repo: Path
    printed: dict[str, list[str]]

    @property
    def deploys(self) -> list[Deploy]:
        return self.shell.deploys()

    def template(self, index: int) -> dict[str, Any]:
        return self.deploys[index].template(STACK)

    def last_line(self, title: str, block: int) -> str:
        return self.printed[title][block].strip().splitlines()[-1]


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory, npx: str, aws_python: str) -> Walk:
    for program in ("jq", "git"):
        if shutil.which(program) is None:
            missing(f"{program} is not installed (Debian package: {program}); the guide uses it")
    root = tmp_path_factory.mktemp("guide")
    shell = GuideShell(root / "shell", npx=npx, aws_python=aws_python)
    repo = repository_copy(root / "repo")
    shell.run("git init --quiet && git add --all && git commit --quiet -m clone", repo)
    printed: dict[str, list[str]] = {}
    titles = sections_with_commands()
    first = [title for title in titles if title.startswith("2.") and title not in NOT_RUN]
    session = "\n".join(block for title in first for block in bash_blocks(title))
    printed[FIRST_DEPLOY] = [shell.run(session, repo, stdin=f"{HUB_USER}\n{HUB_TOKEN}\n").stdout]
    for title in titles:
        if title.startswith(("3", "4")):
            printed[title] = [shell.run(block, repo).stdout for block in bash_blocks(title)]
    return Walk(shell, repo, printed)


# ---------------------------------------------------------------------- the guide as a whole


def test_every_command_block_of_sections_2_to_4_is_run() -> None:
    titles = sections_with_commands()
    assert set(NOT_RUN) <= set(titles), "a block the test leaves out is gone: update NOT_RUN"
    assert [title for title in titles if title.startswith(("2", "3", "4"))] == titles
    # the deploy commands are the one command infra/README.md gives, in infra/
    deploys = markdown.shell_commands(guide(), "aws-cdk@2 deploy")
    assert len(deploys) >= 4, deploys
    assert set(deploys) == {"(cd infra && npx aws-cdk@2 deploy)"}, deploys


def test_every_deploy_is_the_same_command_on_committed_settings(walk: Walk) -> None:
    """First deploy, internet-facing, revocation, builds' security group: each from infra/,
    with every setting committed (a redeploy from another clone deploys the same)."""
    assert len(walk.deploys) == 4
    # the CDK's bootstrap, once, from the clone's root (no app there to synthesize), first
    (bootstrap, *deploys) = [call for call in walk.shell.calls("npx") if call["argv"][1] != "synth"]
    assert bootstrap["argv"] == ["aws-cdk@2", "bootstrap", f"aws://{ACCOUNT}/{REGION}"]
    assert Path(bootstrap["cwd"]) == walk.repo
    assert len(deploys) == 4
    for deploy in walk.deploys:
        assert deploy.cwd == walk.repo / "infra"
        assert deploy.uncommitted == [], deploy.uncommitted
    status = walk.shell.run("git status --porcelain", walk.repo).stdout
    assert status == "", f"the guide leaves files behind in the clone:\n{status}"


# ---------------------------------------------------------------------- section 2


def resources(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }


def security_group(template: dict[str, Any], described: str) -> dict[str, Any]:
    """The properties of the one security group whose description says ``described``."""
    groups: list[dict[str, Any]] = [
        resource["Properties"]
        for resource in resources(template, "AWS::EC2::SecurityGroup").values()
        if described in resource["Properties"]["GroupDescription"]
    ]
    (group,) = groups
    return group


def listener_of(template: dict[str, Any], scheme: str) -> dict[str, Any]:
    (balancer,) = [
        logical_id
        for logical_id, resource in resources(
            template, "AWS::ElasticLoadBalancingV2::LoadBalancer"
        ).items()
        if resource["Properties"]["Scheme"] == scheme
    ]
    listeners: list[dict[str, Any]] = [
        resource["Properties"]
        for resource in resources(template, "AWS::ElasticLoadBalancingV2::Listener").values()
        if resource["Properties"]["LoadBalancerArn"] == {"Ref": balancer}
    ]
    (listener,) = listeners
    return listener


def certificate_requested(walk: Walk) -> str:
    (call,) = walk.shell.aws_calls("RequestCertificate")
    assert call["params"]["DomainName"] == "*.build.example.com", call
    (arn,) = walk.shell.aws_state()["certificates"]
    return str(arn)


def test_first_deploy_is_the_internal_load_balancer_with_the_name_and_certificate(
    walk: Walk,
) -> None:
    template = walk.template(0)
    assert template["Outputs"]["MirrorUrl"]["Value"] == f"https://{DOMAIN}"
    assert "InternetMirrorUrl" not in template["Outputs"]
    listener = listener_of(template, "internal")
    assert listener["Certificates"] == [{"CertificateArn": certificate_requested(walk)}]
    records = resources(template, "AWS::Route53::RecordSet").values()
    assert [record["Properties"]["Name"] for record in records] == [f"{DOMAIN}."]
    # the certificate's validation record went into the zone before the wait
    zones = {entry["zone"] for entry in walk.shell.aws_state()["records"].values()}
    assert zones == {"Z0123456789ABCDEFGHIJ"}
    (waited,) = [
        call for call in walk.shell.aws_calls("DescribeCertificate") if "wait" in call["argv"]
    ]
    assert waited["params"]["CertificateArn"] == certificate_requested(walk)
    emails = [
        item["Properties"]["Endpoint"]
        for item in resources(template, "AWS::SNS::Subscription").values()
    ]
    assert emails == ["ops@example.com"]


def test_first_deploy_runs_the_image_built_and_pushed(walk: Walk) -> None:
    docker = [call["argv"] for call in walk.shell.calls("docker")]
    login, build, push = docker
    registry = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
    assert login[:3] == ["login", "--username", "AWS"] and login[-1] == registry
    assert build[:3] == ["build", "--platform", "linux/amd64"] and build[-1] == "."
    image = build[build.index("--tag") + 1]
    assert push == ["push", image]
    tag = image.removeprefix(f"{registry}/registry-proxy:")
    (task,) = resources(walk.template(0), "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert json.dumps(container["Image"]).endswith(f'registry-proxy:{tag}"]]}}'), container


def test_first_deploy_pulls_with_the_docker_hub_secret_as_typed(walk: Walk) -> None:
    secret = walk.shell.aws_state()["secrets"]["registry-proxy/docker-hub"]
    assert json.loads(secret["versions"][0]) == {"username": HUB_USER, "token": HUB_TOKEN}
    assert secret["arn"] in json.dumps(walk.template(0)["Resources"])


# ---------------------------------------------------------------------- section 3


def client_ca(walk: Walk) -> x509.Certificate:
    published = walk.repo / "infra" / "client-ca" / "ca.pem"
    assert (
        published.read_bytes()
        == (walk.shell.home / "registry-proxy-client-ca" / "ca.pem").read_bytes()
    )
    return x509.load_pem_x509_certificate(published.read_bytes())


def trust_store(walk: Walk, index: int) -> tuple[str, bytes]:
    """The trust store's logical id and the bytes of the CA bundle deploy ``index`` uploads."""
    ((logical_id, store),) = resources(
        walk.template(index), "AWS::ElasticLoadBalancingV2::TrustStore"
    ).items()
    key = store["Properties"]["CaCertificatesBundleS3Key"]
    return logical_id, walk.deploys[index].staged_file(STACK, key).read_bytes()


def codebuild_ranges_of_the_region() -> list[str]:
    """The fixture's (made-up) CODEBUILD IPv4 ranges of the guide's region."""
    document = json.loads((FIXTURES / "ip-ranges.json").read_text())
    return sorted(
        entry["ip_prefix"]
        for entry in document["prefixes"]
        if entry["service"] == "CODEBUILD" and entry["region"] == REGION
    )


def test_internet_facing_listener_verifies_client_certificates_of_the_ca_init_ca_made(
    walk: Walk,
) -> None:
    template = walk.template(1)
    listener = listener_of(template, "internet-facing")
    store_id, bundle = trust_store(walk, 1)
    assert listener["MutualAuthentication"] == {
        "IgnoreClientCertificateExpiry": False,
        "Mode": "verify",
        "TrustStoreArn": {"Fn::GetAtt": [store_id, "TrustStoreArn"]},
    }
    assert listener["Protocol"] == "HTTPS" and listener["Port"] == 443
    assert listener["Certificates"] == [{"CertificateArn": certificate_requested(walk)}]
    client_ca(walk)  # the file init-ca published is its CA
    assert bundle == (walk.repo / "infra" / "client-ca" / "ca.pem").read_bytes()


def test_an_empty_revocation_list_stays_out_of_the_trust_store(walk: Walk) -> None:
    deployed = walk.shell.run(
        f"git show {walk.deploys[1].commit}:infra/client-ca/crl.pem", walk.repo
    ).stdout
    assert len(x509.load_pem_x509_crl(deployed.encode())) == 0  # what init-ca published
    revocations = resources(walk.template(1), "AWS::ElasticLoadBalancingV2::TrustStoreRevocation")
    assert revocations == {}


def test_internet_facing_load_balancer_admits_codebuild_ranges_of_the_region(walk: Walk) -> None:
    template = walk.template(1)
    group = security_group(template, "internet-facing")
    allowed = sorted(rule["CidrIp"] for rule in group["SecurityGroupIngress"])
    assert allowed == codebuild_ranges_of_the_region()
    assert all(ipaddress.ip_network(cidr).version == 4 for cidr in allowed)
    assert {rule["FromPort"] for rule in group["SecurityGroupIngress"]} == {443}


def test_the_guide_prints_the_internet_mirror_url_and_its_record_exists(walk: Walk) -> None:
    title = "3.2 The internet-facing load balancer"
    assert walk.last_line(title, 0) == f"https://{INTERNET_DOMAIN}"
    template = walk.template(1)
    assert template["Outputs"]["InternetMirrorUrl"]["Value"] == f"https://{INTERNET_DOMAIN}"
    names = sorted(
        record["Properties"]["Name"]
        for record in resources(template, "AWS::Route53::RecordSet").values()
    )
    assert names == sorted([f"{DOMAIN}.", f"{INTERNET_DOMAIN}."])


def issued_documents(walk: Walk) -> list[dict[str, str]]:
    """Every version of the project's certificate secret, as the guide stored them."""
    secret = walk.shell.aws_state()["secrets"][f"registry-proxy/clients/{NAME}"]
    return [json.loads(version) for version in secret["versions"]]


def test_each_project_gets_a_certificate_of_the_ca_in_a_secret_only_its_role_reads(
    walk: Walk,
) -> None:
    ca = client_ca(walk)
    for document in issued_documents(walk):
        certificate = x509.load_pem_x509_certificate(document["certificate"].encode())
        certificate.verify_directly_issued_by(ca)
        key = load_pem_private_key(document["private_key"].encode(), password=None)
        assert key.public_key() == certificate.public_key()
        assert document["name"] == NAME
    secret = walk.shell.aws_state()["secrets"][f"registry-proxy/clients/{NAME}"]
    policy = walk.shell.aws_state()["policies"][
        f"codebuild-{PROJECT}-role/registry-proxy-client-certificate"
    ]
    assert policy["Statement"] == [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret["arn"]}
    ]
    assert not list(walk.repo.glob("*.json")), "a certificate's key left in the clone"


def test_the_project_gets_privileged_mode_and_the_files(walk: Walk) -> None:
    (update, *_) = walk.shell.aws_calls("UpdateProject")
    environment = update["params"]["environment"]
    assert environment["privilegedMode"] is True
    assert environment["image"] == "aws/codebuild/standard:7.0"  # the rest kept as it was
    service = walk.shell.home / "src" / "my-service"
    assert (service / "buildspec.yml").read_bytes() == (
        REPO / "docs" / "clients" / "codebuild-buildspec.yml"
    ).read_bytes()
    assert (service / "docs" / "clients" / "use-registry-mirror.sh").read_bytes() == (
        REPO / "docs" / "clients" / "use-registry-mirror.sh"
    ).read_bytes()


def test_a_revoke_puts_the_list_as_written_in_the_trust_store(walk: Walk) -> None:
    template = walk.template(2)
    store_id, _ = trust_store(walk, 2)
    (revocation,) = resources(
        template, "AWS::ElasticLoadBalancingV2::TrustStoreRevocation"
    ).values()
    assert revocation["Properties"]["TrustStoreArn"] == {"Fn::GetAtt": [store_id, "TrustStoreArn"]}
    (content,) = revocation["Properties"]["RevocationContents"]
    assert content["RevocationType"] == "CRL"
    staged = walk.deploys[2].staged_file(STACK, content["S3Key"]).read_bytes()
    assert staged == (walk.repo / "infra" / "client-ca" / "crl.pem").read_bytes()
    revoked = {entry.serial_number for entry in x509.load_pem_x509_crl(staged)}
    # by name: the first certificate and its renewal
    assert revoked == {int(document["serial"], 16) for document in issued_documents(walk)}
    assert len(revoked) == 2
    secret = walk.shell.aws_state()["secrets"][f"registry-proxy/clients/{NAME}"]
    assert secret["deleted"]


# ---------------------------------------------------------------------- section 4


def test_inside_a_vpc_the_builds_security_group_is_admitted(walk: Walk) -> None:
    template = walk.template(3)
    group = security_group(template, "allowed build networks")
    assert [
        (rule.get("SourceSecurityGroupId"), rule["FromPort"])
        for rule in group["SecurityGroupIngress"]
    ] == [(BUILD_SG, 443)]
    # the internet-facing side is still there: both set-ups at once
    listener_of(template, "internet-facing")
    assert walk.last_line(INSIDE, 0) == f"https://{DOMAIN}"


def test_inside_a_vpc_the_project_is_in_the_subnets_with_the_permissions(walk: Walk) -> None:
    vpc_updates = [
        call["params"]["vpcConfig"]
        for call in walk.shell.aws_calls("UpdateProject")
        if "vpcConfig" in call["params"]
    ]
    assert vpc_updates == [
        {"vpcId": "vpc-0a1b2c3d4e5f60718", "subnets": SUBNETS, "securityGroupIds": [BUILD_SG]}
    ]
    (group,) = walk.shell.aws_state()["groups"].values()
    assert group["VpcId"] == "vpc-0a1b2c3d4e5f60718" and group["GroupName"] == f"{PROJECT}-builds"
    policy = walk.shell.aws_state()["policies"][f"codebuild-{PROJECT}-role/codebuild-vpc-builds"]
    interfaces, permission = policy["Statement"]
    assert "ec2:CreateNetworkInterface" in interfaces["Action"]
    prefix = f"arn:aws:ec2:{REGION}:{ACCOUNT}"
    assert permission["Resource"] == f"{prefix}:network-interface/*"
    assert permission["Condition"]["StringEquals"] == {
        "ec2:Subnet": [f"{prefix}:subnet/{subnet}" for subnet in SUBNETS],
        "ec2:AuthorizedService": "codebuild.amazonaws.com",
    }
