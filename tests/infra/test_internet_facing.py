"""The internet-facing load balancer for builds outside any VPC (issue 20): mutual TLS in verify
mode with the builds' CA, HTTPS only, in the public subnets, beside the internal one, and no way
to the tasks that skips the client certificate check."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint  # type: ignore[import-untyped]
from cryptography import x509
from registry_proxy_infra.application import INFRA_DIR

from proxy.commands.cli import main as certs_main

from .guide_shell import staged_file
from .scenarios import (
    CUSTOM_CONTEXT,
    DOMAIN_NAME,
    FIXTURES,
    INTERNET_CONTEXT,
    INTERNET_DOMAIN_NAME,
    INTERNET_EXISTING_VPC_CONTEXT,
    REGION,
    Synthesized,
    synthesize,
)
from .test_cfn_lint import IGNORED_CHECKS
from .test_stack import environment, group_id


@pytest.fixture(scope="module", params=["internet", "internet-existing-vpc"])
def internet_synth(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Synthesized:
    context = INTERNET_CONTEXT if request.param == "internet" else INTERNET_EXISTING_VPC_CONTEXT
    return synthesize(request.param, context, tmp_path_factory.mktemp(request.param))


def internet_group(synth: Synthesized) -> str:
    internet = synth.stack.internet
    assert internet is not None
    return group_id(synth, internet.security_group)


def balancers(synth: Synthesized) -> dict[str, dict[str, Any]]:
    """Load balancer properties by scheme."""
    found = {}
    for resource in synth.resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values():
        properties = resource["Properties"]
        found[properties["Scheme"]] = properties
    assert set(found) == {"internal", "internet-facing"}
    return found


def balancer_id(synth: Synthesized, scheme: str) -> str:
    (logical_id,) = [
        logical_id
        for logical_id, resource in synth.resources(
            "AWS::ElasticLoadBalancingV2::LoadBalancer"
        ).items()
        if resource["Properties"]["Scheme"] == scheme
    ]
    return logical_id


def listeners_of(synth: Synthesized, scheme: str) -> list[dict[str, Any]]:
    balancer = {"Ref": balancer_id(synth, scheme)}
    return [
        resource["Properties"]
        for resource in synth.resources("AWS::ElasticLoadBalancingV2::Listener").values()
        if resource["Properties"]["LoadBalancerArn"] == balancer
    ]


def test_internet_facing_listener_is_https_with_mutual_tls_in_verify_mode(
    internet_synth: Synthesized,
) -> None:
    """Every listener of the internet-facing balancer: HTTPS on 443 and verify mode with the
    stack's trust store; there is no plain HTTP listener to go round it."""
    (listener,) = listeners_of(internet_synth, "internet-facing")
    assert listener["Protocol"] == "HTTPS"
    assert listener["Port"] == 443
    assert listener["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    trust_store = internet_synth.logical_id("AWS::ElasticLoadBalancingV2::TrustStore")
    assert listener["MutualAuthentication"] == {
        "IgnoreClientCertificateExpiry": False,
        "Mode": "verify",
        "TrustStoreArn": {"Fn::GetAtt": [trust_store, "TrustStoreArn"]},
    }
    every = [
        item["Properties"]
        for item in internet_synth.resources("AWS::ElasticLoadBalancingV2::Listener").values()
    ]
    assert all(item["Protocol"] == "HTTPS" for item in every)


def test_the_internal_balancer_is_as_before(internet_synth: Synthesized) -> None:
    (listener,) = listeners_of(internet_synth, "internal")
    assert listener["Protocol"] == "HTTPS"
    assert "MutualAuthentication" not in listener
    internal = balancers(internet_synth)["internal"]
    service = internet_synth.only("AWS::ECS::Service")
    assert internal["Subnets"] == service["NetworkConfiguration"]["AwsvpcConfiguration"]["Subnets"]


def staged_asset(synth: Synthesized, object_key: str) -> Path:
    """The file synthesis staged for the file asset uploaded as ``object_key``."""
    return staged_file(synth.outdir, synth.stack.stack_name, object_key)


def test_the_trust_store_holds_the_ca_bundle_given(internet_synth: Synthesized) -> None:
    store = internet_synth.only("AWS::ElasticLoadBalancingV2::TrustStore")
    key = store["CaCertificatesBundleS3Key"]
    assert "cdk-hnb659fds-assets" in json.dumps(store["CaCertificatesBundleS3Bucket"])
    staged = staged_asset(internet_synth, key)
    assert staged.read_bytes() == (FIXTURES / "client-ca.pem").read_bytes()


def test_no_revocation_without_a_list_or_with_an_empty_one(internet_synth: Synthesized) -> None:
    """The "internet" scenario's list (tests/infra/fixtures/client-ca.crl.pem) revokes nothing:
    no TrustStoreRevocation, as without any list ("internet-existing-vpc")."""
    revocations = internet_synth.resources("AWS::ElasticLoadBalancingV2::TrustStoreRevocation")
    assert revocations == {}
    assert internet_synth.stack.client_trust.revocation is None


def revocation_of(synth: Synthesized) -> tuple[dict[str, Any], bytes]:
    """The one TrustStoreRevocation's properties, and the bytes of the file staged for it."""
    (revocation,) = synth.resources("AWS::ElasticLoadBalancingV2::TrustStoreRevocation").values()
    properties: dict[str, Any] = revocation["Properties"]
    (content,) = properties["RevocationContents"]
    assert content["RevocationType"] == "CRL"
    return properties, staged_asset(synth, content["S3Key"]).read_bytes()


@pytest.fixture(scope="module")
def client_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A CA made by `registry-proxy certs init-ca`: (its private directory, the published one)."""
    root = tmp_path_factory.mktemp("certs")
    private, published = root / "private", root / "client-ca"
    command = ["certs", "init-ca", "--dir", str(private), "--publish", str(published)]
    assert certs_main(command) == 0
    return private, published


def test_revocation_follows_what_certs_publishes(
    client_ca: tuple[Path, Path], tmp_path: Path
) -> None:
    """The files `registry-proxy certs` writes: init-ca's list (no entry) makes no revocation;
    once a certificate is revoked, the list is in the trust store's revocation, byte for byte."""
    private, published = client_ca
    context = {
        **INTERNET_CONTEXT,
        "clientCaBundleFile": str(published / "ca.pem"),  # absolute: taken as it is
        "clientRevocationListFile": str(published / "crl.pem"),
    }
    empty = synthesize("certs-init-ca", context, tmp_path / "empty")
    empty.template.resource_count_is("AWS::ElasticLoadBalancingV2::TrustStoreRevocation", 0)
    (store,) = empty.resources("AWS::ElasticLoadBalancingV2::TrustStore").values()
    bundle = staged_asset(empty, store["Properties"]["CaCertificatesBundleS3Key"])
    assert bundle.read_bytes() == (published / "ca.pem").read_bytes()

    out = tmp_path / "build.json"
    assert (
        certs_main(["certs", "issue", "--dir", str(private), "ci-builds", "--out", str(out)]) == 0
    )
    assert certs_main(["certs", "revoke", "--dir", str(private), "ci-builds"]) == 0
    revoked = synthesize("certs-revoked", context, tmp_path / "revoked")
    properties, staged = revocation_of(revoked)
    store_id = revoked.logical_id("AWS::ElasticLoadBalancingV2::TrustStore")
    assert properties["TrustStoreArn"] == {"Fn::GetAtt": [store_id, "TrustStoreArn"]}
    assert staged == (published / "crl.pem").read_bytes()
    serial = int(json.loads(out.read_text())["serial"], 16)
    assert [entry.serial_number for entry in x509.load_pem_x509_crl(staged)] == [serial]
    # the revocation resource passes the same checks as the rest of the template
    assert [row for row in revoked.nag_rows() if row["Compliance"] == "Non-Compliant"] == []
    matches = lint(
        json.dumps(revoked.json), config=ManualArgs(regions=[REGION], ignore_checks=IGNORED_CHECKS)
    )
    assert [f"{match.rule.id} {match.message}" for match in matches] == []


def test_internet_facing_balancer_is_in_the_public_subnets(internet_synth: Synthesized) -> None:
    subnets = balancers(internet_synth)["internet-facing"]["Subnets"]
    if internet_synth.name == "internet-existing-vpc":
        assert subnets == INTERNET_EXISTING_VPC_CONTEXT["vpcPublicSubnetIds"].split(",")
        return
    public = {
        logical_id
        for logical_id, subnet in internet_synth.resources("AWS::EC2::Subnet").items()
        if {"Key": "aws-cdk:subnet-type", "Value": "Public"} in subnet["Properties"]["Tags"]
    }
    assert {item["Ref"] for item in subnets} == public


def test_tasks_stay_private_and_admit_the_balancers_alone(internet_synth: Synthesized) -> None:
    """No path to the tasks that skips mutual TLS: only the two balancers' groups reach them,
    and the internal one only from inside (its ingress unchanged)."""
    stack = internet_synth.stack
    service_group = group_id(internet_synth, stack.proxy.security_group)
    balancer_groups = {
        group_id(internet_synth, stack.load_balancer.security_group),
        internet_group(internet_synth),
    }
    groups = internet_synth.resources("AWS::EC2::SecurityGroup")
    assert "SecurityGroupIngress" not in groups[service_group]["Properties"]
    sources = [
        ingress["Properties"]["SourceSecurityGroupId"]["Fn::GetAtt"][0]
        for ingress in internet_synth.resources("AWS::EC2::SecurityGroupIngress").values()
        if ingress["Properties"]["GroupId"] == {"Fn::GetAtt": [service_group, "GroupId"]}
    ]
    assert sorted(sources) == sorted(balancer_groups)
    network = internet_synth.only("AWS::ECS::Service")["NetworkConfiguration"]
    assert network["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    # the tasks are in both target groups, and in no other
    registered = internet_synth.only("AWS::ECS::Service")["LoadBalancers"]
    assert len(registered) == 2
    assert {item["ContainerPort"] for item in registered} == {5000}


def test_internet_ingress_is_443_from_the_allowed_ranges_or_anywhere(
    internet_synth: Synthesized,
) -> None:
    group = internet_group(internet_synth)
    rules = internet_synth.resources("AWS::EC2::SecurityGroup")[group]["Properties"][
        "SecurityGroupIngress"
    ]
    assert {(rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) for rule in rules} == {
        (443, 443, "tcp")
    }
    expected = (
        INTERNET_EXISTING_VPC_CONTEXT["internetAllowedCidrs"]
        if internet_synth.name == "internet-existing-vpc"
        else ["0.0.0.0/0"]
    )
    assert sorted(rule["CidrIp"] for rule in rules) == sorted(expected)
    assert (
        "SecurityGroupEgress"
        not in internet_synth.resources("AWS::EC2::SecurityGroup")[group]["Properties"]
    )
    service_group = group_id(internet_synth, internet_synth.stack.proxy.security_group)
    egress = [
        (
            rule["Properties"]["DestinationSecurityGroupId"],
            rule["Properties"]["FromPort"],
            rule["Properties"]["ToPort"],
        )
        for rule in internet_synth.resources("AWS::EC2::SecurityGroupEgress").values()
        if rule["Properties"]["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
    ]
    # nothing out but the way to the tasks
    assert egress == [({"Fn::GetAtt": [service_group, "GroupId"]}, 5000, 5000)]


def test_outputs_and_names(internet_synth: Synthesized) -> None:
    outputs = internet_synth.json["Outputs"]
    assert outputs["InternetMirrorUrl"]["Value"] == f"https://{INTERNET_DOMAIN_NAME}"
    assert outputs["MirrorUrl"]["Value"] == f"https://{DOMAIN_NAME}"
    records = sorted(
        record["Properties"]["Name"]
        for record in internet_synth.resources("AWS::Route53::RecordSet").values()
    )
    assert records == sorted([f"{DOMAIN_NAME}.", f"{INTERNET_DOMAIN_NAME}."])
    (listener,) = listeners_of(internet_synth, "internet-facing")
    expected = INTERNET_EXISTING_VPC_CONTEXT.get("internetCertificateArn")
    if internet_synth.name == "internet":
        expected = INTERNET_CONTEXT["certificateArn"]
    assert listener["Certificates"] == [{"CertificateArn": expected}]


def test_the_proxy_trusts_forwarded_for_from_both_balancers(internet_synth: Synthesized) -> None:
    trusted = environment(internet_synth)["PROXY_TRUSTED_PROXIES"].split(",")
    if internet_synth.name == "internet-existing-vpc":
        assert trusted == [CUSTOM_CONTEXT["existingVpcCidr"]]
        return
    ranges = {
        subnet["Properties"]["CidrBlock"]
        for subnet in internet_synth.resources("AWS::EC2::Subnet").values()
    }
    assert set(trusted) == ranges  # private and public subnets both


def test_cdk_nag_finds_nothing_unacknowledged(internet_synth: Synthesized) -> None:
    rows = internet_synth.nag_rows()
    assert [row for row in rows if row["Compliance"] == "Non-Compliant"] == []
    suppressed = {
        (row["Rule ID"], row["Resource ID"].removeprefix(f"{internet_synth.stack.stack_name}/"))
        for row in rows
        if row["Compliance"] == "Suppressed"
    }
    open_to_all = ("AwsSolutions-EC23", "InternetFacing/LoadBalancerSecurityGroup/Resource")
    assert (open_to_all in suppressed) == (internet_synth.name == "internet")
    assert {"AwsSolutions-ELB2", "AwsSolutions-EC23"} <= {row["Rule ID"] for row in rows}


def test_cfn_lint_finds_nothing(internet_synth: Synthesized) -> None:
    matches = lint(
        json.dumps(internet_synth.json),
        config=ManualArgs(regions=[REGION], ignore_checks=IGNORED_CHECKS),
    )
    assert [f"{match.rule.id} {match.message}" for match in matches] == []


def test_access_logs_of_the_internet_balancer_have_their_own_prefix(
    internet_synth: Synthesized,
) -> None:
    attributes = {
        item["Key"]: item["Value"]
        for item in balancers(internet_synth)["internet-facing"]["LoadBalancerAttributes"]
    }
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["access_logs.s3.prefix"] == "alb-internet"
    assert attributes["routing.http.xff_header_processing.mode"] == "append"
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"


def test_internet_facing_is_off_by_default(default_synth: Synthesized) -> None:
    default_synth.template.resource_count_is("AWS::ElasticLoadBalancingV2::TrustStore", 0)
    assert "InternetMirrorUrl" not in default_synth.json["Outputs"]


@pytest.mark.parametrize("fixture", ["client-ca.pem", "client-ca.crl.pem"])
def test_fixtures_hold_no_key(fixture: str) -> None:
    assert "PRIVATE KEY" not in (FIXTURES / fixture).read_text()


def test_the_outputs_the_guides_name_are_the_stacks(internet_synth: Synthesized) -> None:
    """infra/README.md's list of outputs is the stack's (with the internet-facing load
    balancer on), and every output docs/codebuild.md reads or names exists."""
    outputs = set(internet_synth.json["Outputs"])
    readme = (INFRA_DIR / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| outputs |"))
    assert {name for name in re.findall(r"`(\w+)`", row) if name[0].isupper()} == outputs
    guide = (INFRA_DIR.parent / "docs" / "codebuild.md").read_text()
    read = set(re.findall(r"OutputKey=='(\w+)'", guide))
    named = set(re.findall(r"`([A-Z][a-z][A-Za-z]*)`", guide))  # CamelCase: outputs
    assert read == {"MirrorUrl", "InternetMirrorUrl"}
    assert named >= read
    assert named <= outputs, named - outputs
