"""The synthesized template has each property issue 5 asks of the deployment."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Match
from registry_proxy_infra import scaling
from registry_proxy_infra.config import ProxyStackConfig
from registry_proxy_infra.scaling import CONCURRENT_REQUESTS_PER_TASK
from registry_proxy_infra.service import S3_CACHE_ACTIONS, SPOOL_PATH

from .scenarios import (
    CERTIFICATE_ARN,
    CUSTOM_CONTEXT,
    DOMAIN_NAME,
    IMAGE_TAG,
    KMS_KEY_ARN,
    REGION,
    REQUIRED_CONTEXT,
    SECRET_ARN,
    Synthesized,
    synthesize,
)

# ---------------------------------------------------------------------------- helpers


def container(synth: Synthesized) -> dict[str, Any]:
    definitions = synth.only("AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    assert len(definitions) == 1
    found: dict[str, Any] = definitions[0]
    return found


def environment(synth: Synthesized) -> dict[str, Any]:
    return {item["Name"]: item["Value"] for item in container(synth)["Environment"]}


def secrets(synth: Synthesized) -> dict[str, Any]:
    return {item["Name"]: item["ValueFrom"] for item in container(synth)["Secrets"]}


def ref(logical_id: str) -> dict[str, str]:
    return {"Ref": logical_id}


def arn_of(logical_id: str) -> dict[str, list[str]]:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def cache_bucket_id(synth: Synthesized) -> str:
    return synth.stack.resolve(synth.stack.storage.bucket.bucket_name)["Ref"]  # type: ignore[no-any-return]


def group_id(synth: Synthesized, group: ec2.ISecurityGroup) -> str:
    logical_id: str = synth.stack.resolve(group.security_group_id)["Fn::GetAtt"][0]
    return logical_id


def statements(synth: Synthesized, role_logical_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        if ref(role_logical_id) in policy["Properties"]["Roles"]:
            found.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return found


def role_id(synth: Synthesized, key: str) -> str:
    role = synth.only("AWS::ECS::TaskDefinition")[key]
    logical_id: str = role["Fn::GetAtt"][0]
    return logical_id


# ---------------------------------------------------------------------------- network


def test_new_vpc_has_private_subnets_in_two_zones_with_nat(default_synth: Synthesized) -> None:
    default_synth.template.resource_count_is("AWS::EC2::VPC", 1)
    default_synth.template.has_resource_properties(
        "AWS::EC2::VPC",
        {"CidrBlock": "10.80.0.0/16", "EnableDnsHostnames": True, "EnableDnsSupport": True},
    )
    default_synth.template.resource_count_is("AWS::EC2::NatGateway", 2)
    private = [
        subnet
        for subnet in default_synth.resources("AWS::EC2::Subnet").values()
        if {"Key": "aws-cdk:subnet-type", "Value": "Private"} in subnet["Properties"]["Tags"]
    ]
    assert len(private) == 2
    default_synth.template.has_resource_properties(
        "AWS::EC2::FlowLog", {"ResourceType": "VPC", "TrafficType": "ALL"}
    )


def test_existing_vpc_is_used_by_id_without_creating_one(custom_synth: Synthesized) -> None:
    custom_synth.template.resource_count_is("AWS::EC2::VPC", 0)
    custom_synth.template.resource_count_is("AWS::EC2::NatGateway", 0)
    subnets = CUSTOM_CONTEXT["vpcPrivateSubnetIds"].split(",")
    service = custom_synth.only("AWS::ECS::Service")
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["Subnets"] == subnets
    assert custom_synth.only("AWS::ElasticLoadBalancingV2::LoadBalancer")["Subnets"] == subnets
    for group in custom_synth.resources("AWS::EC2::SecurityGroup").values():
        assert group["Properties"]["VpcId"] == CUSTOM_CONTEXT["vpcId"]


def test_s3_gateway_endpoint_serves_the_private_subnets(any_synth: Synthesized) -> None:
    endpoint = any_synth.only("AWS::EC2::VPCEndpoint")
    assert endpoint["VpcEndpointType"] == "Gateway"
    assert json.dumps(endpoint["ServiceName"]).endswith('.s3"]]}') or endpoint["ServiceName"] == (
        "com.amazonaws.eu-west-1.s3"
    )
    assert len(endpoint["RouteTableIds"]) >= 2
    if any_synth.name == "custom":
        tables = CUSTOM_CONTEXT["vpcPrivateSubnetRouteTableIds"].split(",")
        assert endpoint["RouteTableIds"] == tables


def test_synthesis_needs_no_context_lookups(any_synth: Synthesized) -> None:
    manifest = any_synth.manifest()
    assert not manifest.get("missing"), f"synthesis asked for lookups: {manifest['missing']}"
    assert "dummy" not in json.dumps(any_synth.json)


# ---------------------------------------------------------------------------- cache bucket


def test_cache_bucket_blocks_public_access_and_encrypts(any_synth: Synthesized) -> None:
    bucket = any_synth.resources("AWS::S3::Bucket")[cache_bucket_id(any_synth)]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "AES256"}
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert bucket["LoggingConfiguration"]["LogFilePrefix"] == "s3-access/cache-bucket/"


def test_cache_bucket_is_kept_when_the_stack_is_deleted(any_synth: Synthesized) -> None:
    resource = any_synth.resources("AWS::S3::Bucket")[cache_bucket_id(any_synth)]
    assert resource["DeletionPolicy"] == "Retain"


def test_every_bucket_refuses_plain_http(any_synth: Synthesized) -> None:
    policies = any_synth.resources("AWS::S3::BucketPolicy")
    buckets = any_synth.resources("AWS::S3::Bucket")
    covered = {policy["Properties"]["Bucket"]["Ref"] for policy in policies.values()}
    assert covered == set(buckets)
    for policy in policies.values():
        deny = [
            statement
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]
            if statement["Effect"] == "Deny"
        ]
        assert any(
            statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for statement in deny
        ), "no statement denying requests without TLS"


def test_lifecycle_aborts_incomplete_multipart_uploads(any_synth: Synthesized) -> None:
    bucket = any_synth.resources("AWS::S3::Bucket")[cache_bucket_id(any_synth)]["Properties"]
    rules = bucket["LifecycleConfiguration"]["Rules"]
    assert {
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        "Id": "abort-incomplete-multipart-uploads",
        "Status": "Enabled",
    } in rules


def lifecycle_rules(synth: Synthesized) -> list[dict[str, Any]]:
    bucket = synth.resources("AWS::S3::Bucket")[cache_bucket_id(synth)]["Properties"]
    rules: list[dict[str, Any]] = bucket["LifecycleConfiguration"]["Rules"]
    return rules


def test_no_lifecycle_rule_ages_cached_content(any_synth: Synthesized) -> None:
    # Content expires by last use (the proxy's sweeps); by age only the last-use records do.
    expiring = [rule for rule in lifecycle_rules(any_synth) if "ExpirationInDays" in rule]
    assert [rule["Prefix"] for rule in expiring] == ["cache/access/"]


def test_cache_expiry_is_off_by_default(default_synth: Synthesized) -> None:
    assert "PROXY_CACHE_EXPIRE_UNUSED" not in environment(default_synth)
    [records] = [r for r in lifecycle_rules(default_synth) if "ExpirationInDays" in r]
    assert records["ExpirationInDays"] == 90


def test_cache_expiry_by_last_use_when_set(custom_synth: Synthesized) -> None:
    assert environment(custom_synth)["PROXY_CACHE_EXPIRE_UNUSED"] == "30d"
    assert {
        "ExpirationInDays": 31,
        "Id": "expire-stale-last-use-records",
        "Prefix": "cache/access/",
        "Status": "Enabled",
    } in lifecycle_rules(custom_synth)


def test_cache_gc_runs_daily_as_the_proxy_task(any_synth: Synthesized) -> None:
    rule = any_synth.only("AWS::Events::Rule")
    assert rule["ScheduleExpression"] == "cron(17 3 * * ? *)"
    [target] = rule["Targets"]
    task_definition = any_synth.logical_id("AWS::ECS::TaskDefinition")
    parameters = target["EcsParameters"]
    assert parameters["TaskDefinitionArn"] == ref(task_definition)
    assert parameters["LaunchType"] == "FARGATE" and parameters["TaskCount"] == 1
    network = parameters["NetworkConfiguration"]["AwsVpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    assert network["SecurityGroups"] == [
        {"Fn::GetAtt": [group_id(any_synth, any_synth.stack.proxy.security_group), "GroupId"]}
    ]
    overrides = json.loads(target["Input"])["containerOverrides"]
    assert overrides == [{"name": "proxy", "command": ["cache", "gc"]}]


# ---------------------------------------------------------------------------- credentials


def test_docker_hub_credentials_reach_the_task_only_as_ecs_secrets(
    any_synth: Synthesized,
) -> None:
    values = secrets(any_synth)
    assert values == {
        "PROXY_UPSTREAM_USERNAME": f"{SECRET_ARN}:username::",
        "PROXY_UPSTREAM_PASSWORD": f"{SECRET_ARN}:token::",
    }
    names = set(environment(any_synth))
    assert not names & {"PROXY_UPSTREAM_USERNAME", "PROXY_UPSTREAM_PASSWORD"}


def test_the_stack_makes_no_secret_of_its_own(any_synth: Synthesized) -> None:
    """One it made would start empty: anonymous pulls that nobody chose."""
    any_synth.template.resource_count_is("AWS::SecretsManager::Secret", 0)


def test_anonymous_pulls_give_the_task_no_credentials(tmp_path: Path) -> None:
    context = {**REQUIRED_CONTEXT, "dockerHubSecretArn": None, "anonymousPulls": True}
    synth = synthesize("anonymous", context, tmp_path)
    assert "Secrets" not in container(synth)
    assert "secretsmanager" not in json.dumps(synth.resources("AWS::IAM::Policy"))


def test_a_customer_managed_key_on_the_secret_is_granted_through_secrets_manager(
    any_synth: Synthesized,
) -> None:
    execution = statements(any_synth, role_id(any_synth, "ExecutionRoleArn"))
    decrypt = [statement for statement in execution if "kms:Decrypt" in statement["Action"]]
    if any_synth.name == "default":
        assert decrypt == []
        return
    assert decrypt == [
        {
            "Action": "kms:Decrypt",
            "Condition": {
                "StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}
            },
            "Effect": "Allow",
            "Resource": KMS_KEY_ARN,
            "Sid": "DockerHubSecretKey",
        }
    ]


def test_only_the_execution_role_reads_the_secret(any_synth: Synthesized) -> None:
    readers = [
        statement
        for policy in any_synth.resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "secretsmanager:GetSecretValue" in json.dumps(statement["Action"])
    ]
    assert len(readers) == 1
    execution = statements(any_synth, role_id(any_synth, "ExecutionRoleArn"))
    assert readers[0] in execution
    assert readers[0]["Resource"] != "*"


# ---------------------------------------------------------------------------- ECS


def test_container_insights_is_a_setting(any_synth: Synthesized) -> None:
    expected = "disabled" if any_synth.name == "custom" else "enabled"
    assert any_synth.only("AWS::ECS::Cluster")["ClusterSettings"] == [
        {"Name": "containerInsights", "Value": expected}
    ]


def test_ecs_exec_is_a_setting(any_synth: Synthesized) -> None:
    """Off by default; on, it needs a writable root (its agent writes into the container)."""
    service = any_synth.only("AWS::ECS::Service")
    exec_on = any_synth.name == "custom"
    assert service.get("EnableExecuteCommand", False) is exec_on
    assert container(any_synth)["ReadonlyRootFilesystem"] is not exec_on


def test_fargate_service_runs_at_least_two_tasks_with_rollback(any_synth: Synthesized) -> None:
    service = any_synth.only("AWS::ECS::Service")
    assert service["LaunchType"] == "FARGATE"
    # No desired count: each deployment would reset a scaled-out service to it. Autoscaling's
    # minimum (at least 2) holds the floor instead.
    assert "DesiredCount" not in service
    assert service["DeploymentConfiguration"] == {
        "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True},
        "MaximumPercent": 200,
        "MinimumHealthyPercent": 100,
    }
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def scaling_policies(synth: Synthesized) -> dict[str, dict[str, Any]]:
    """Target tracking configurations by the metric they track."""
    found = {}
    for policy in synth.resources("AWS::ApplicationAutoScaling::ScalingPolicy").values():
        properties = policy["Properties"]
        assert properties["PolicyType"] == "TargetTrackingScaling"
        tracking = properties["TargetTrackingScalingPolicyConfiguration"]
        name = (
            tracking.get("PredefinedMetricSpecification", {}).get("PredefinedMetricType")
            or tracking["CustomizedMetricSpecification"]["MetricName"]
        )
        found[name] = tracking
    return found


def test_service_scales_on_requests_in_progress_and_cpu(any_synth: Synthesized) -> None:
    target = any_synth.only("AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert target["MinCapacity"] >= 2
    assert target["MaxCapacity"] > target["MinCapacity"]
    policies = scaling_policies(any_synth)
    assert set(policies) == {"ConcurrentRequests", "ECSServiceAverageCPUUtilization"}
    signal = policies["ConcurrentRequests"]
    assert signal["CustomizedMetricSpecification"] == {
        "MetricName": "ConcurrentRequests",
        "Namespace": environment(any_synth)["PROXY_CLOUDWATCH_NAMESPACE"],
        "Statistic": "Average",
    }
    assert signal["TargetValue"] == CONCURRENT_REQUESTS_PER_TASK


def test_the_concurrency_target_leaves_the_cpu_targets_margin_under_the_s3_pool() -> None:
    """The target is the proxy's S3 pool (blob downloads at once before the next ones wait)
    less the margin the default CPU target leaves under the vCPU."""
    s3 = importlib.import_module("proxy.storage.s3")
    pool = inspect.signature(s3.S3Storage).parameters["max_pool_connections"].default
    assert pool == scaling.S3_POOL_CONNECTIONS
    assert pool >= CONCURRENT_REQUESTS_PER_TASK * scaling.MARGIN
    assert pool < (CONCURRENT_REQUESTS_PER_TASK + 1) * scaling.MARGIN
    # the same margin as the default CPU target's under the vCPU (100 / 60)
    assert abs(100 / ProxyStackConfig().cpu_target_percent - scaling.MARGIN) < 0.1


def test_cpu_target_is_of_the_one_vcpu_the_event_loop_uses(tmp_path: Path) -> None:
    """A single-process proxy on a 2-vCPU task reaches 50 % of the task's CPU at most."""
    synth = synthesize("two-vcpu", {**REQUIRED_CONTEXT, "cpu": 2048, "memoryMiB": 4096}, tmp_path)
    assert scaling_policies(synth)["ECSServiceAverageCPUUtilization"]["TargetValue"] == 30


def test_custom_task_counts(custom_synth: Synthesized) -> None:
    target = custom_synth.only("AWS::ApplicationAutoScaling::ScalableTarget")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (3, 10)


def test_container_listens_on_5000_with_the_spool_on_the_task_storage(
    any_synth: Synthesized,
) -> None:
    proxy = container(any_synth)
    assert proxy["PortMappings"] == [{"ContainerPort": 5000, "Name": "http", "Protocol": "tcp"}]
    assert proxy["MountPoints"] == [
        {"ContainerPath": SPOOL_PATH, "ReadOnly": False, "SourceVolume": "spool"}
    ]
    assert environment(any_synth)["PROXY_SPOOL_DIR"] == SPOOL_PATH
    volumes = any_synth.only("AWS::ECS::TaskDefinition")["Volumes"]
    assert volumes == [{"Name": "spool"}]  # a bind mount on the task's ephemeral storage


def test_spool_mount_is_where_the_image_declares_its_owned_volume() -> None:
    """A Fargate bind mount is root's (0755) unless the image declares a VOLUME at that path,
    created with the proxy user's ownership: the stack and the Dockerfile must agree."""
    from registry_proxy_infra.service import REPOSITORY_ROOT

    dockerfile = (REPOSITORY_ROOT / "Dockerfile").read_text()
    final = dockerfile.split("\nFROM ", 2)[2]
    [volumes] = re.findall(r"^VOLUME (\[.*\])$", final, re.MULTILINE)
    assert SPOOL_PATH in json.loads(volumes)
    assert re.search(rf"install -d -o 10001 -g 10001 -m 0700 .*{re.escape(SPOOL_PATH)}", final)
    assert f"PROXY_SPOOL_DIR={SPOOL_PATH}" in final


def test_one_shutdown_deadline_shorter_than_the_stop_timeout(any_synth: Synthesized) -> None:
    """ECS sends SIGKILL stopTimeout seconds after SIGTERM; the proxy must be gone by then: its
    one deadline (the grace) plus aiohttp's closing (twice CLOSE_SECONDS) fit inside."""
    shutdown = importlib.import_module("proxy.http.shutdown")
    grace = int(environment(any_synth)["PROXY_SHUTDOWN_GRACE"])
    stop_timeout = container(any_synth)["StopTimeout"]
    assert grace + 2 * shutdown.CLOSE_SECONDS < stop_timeout <= 120


def test_container_health_check_runs_the_images_healthcheck(any_synth: Synthesized) -> None:
    assert container(any_synth)["HealthCheck"] == {
        "Command": ["CMD", "registry-proxy", "healthcheck"],
        "Interval": 15,
        "Retries": 3,
        "StartPeriod": 15,
        "Timeout": 5,
    }


def test_container_environment_configures_s3_storage_and_json_logs(
    any_synth: Synthesized,
) -> None:
    env = environment(any_synth)
    assert env["PROXY_LISTEN"] == "0.0.0.0:5000"
    assert env["PROXY_STORAGE"] == {
        "Fn::Join": ["", ["s3://", ref(cache_bucket_id(any_synth)), "/cache"]]
    }
    assert env["PROXY_LOG_FORMAT"] == "json"
    assert env["PROXY_UPSTREAM_URL"] == "https://registry-1.docker.io"
    # longer than the load balancer's idle timeout (900 s), so the balancer closes first
    assert env["PROXY_CLIENT_IDLE_TIMEOUT"] == "930"
    expected_redirect = "true" if any_synth.name == "custom" else "false"
    assert env["PROXY_BLOB_REDIRECT"] == expected_redirect


def test_trusted_proxies_are_the_load_balancer_and_exactly_one_hop(any_synth: Synthesized) -> None:
    """The balancer's own subnets (the VPC's range for an existing VPC, whose subnets' ranges
    are not known offline), and one X-Forwarded-For entry: the one the balancer appended."""
    env = environment(any_synth)
    assert env["PROXY_TRUSTED_HOPS"] == "1"
    if any_synth.name == "custom":
        assert env["PROXY_TRUSTED_PROXIES"] == "10.40.0.0/16"
        return
    balancer = any_synth.only("AWS::ElasticLoadBalancingV2::LoadBalancer")
    subnet_ids = [item["Ref"] for item in balancer["Subnets"]]
    subnets = any_synth.resources("AWS::EC2::Subnet")
    ranges = [subnets[subnet_id]["Properties"]["CidrBlock"] for subnet_id in subnet_ids]
    assert env["PROXY_TRUSTED_PROXIES"] == ",".join(ranges)
    assert "10.80.0.0/16" not in env["PROXY_TRUSTED_PROXIES"]


def test_load_balancer_appends_to_forwarded_for(any_synth: Synthesized) -> None:
    balancer = any_synth.only("AWS::ElasticLoadBalancingV2::LoadBalancer")
    attributes = {item["Key"]: item["Value"] for item in balancer["LoadBalancerAttributes"]}
    assert attributes["routing.http.xff_header_processing.mode"] == "append"


def test_a_forged_forwarded_for_is_not_believed_with_the_stacks_settings(
    any_synth: Synthesized,
) -> None:
    """The proxy, configured as the stack configures it, facing a client inside the VPC that
    claims an address from the operator network."""
    config = importlib.import_module("proxy.config")
    access = importlib.import_module("proxy.http.access")
    env = environment(any_synth)
    settings = config.load_settings(
        {name: env[name] for name in ("PROXY_TRUSTED_PROXIES", "PROXY_TRUSTED_HOPS")}
    )
    policy = access.AccessPolicy(
        trusted_proxies=settings.access.trusted_proxies, trusted_hops=settings.access.trusted_hops
    )
    balancer = str(next(iter(settings.access.trusted_proxies))[10])
    client = balancer  # a client that shares the balancer's subnet
    claimed = "127.0.0.1"  # the operator network of the default scenario
    found = policy.client_address(balancer, f"{claimed}, {client}")
    assert str(found) == client


def test_operator_endpoints_are_closed_to_the_network_by_default(any_synth: Synthesized) -> None:
    expected = "10.60.0.0/24" if any_synth.name == "custom" else "127.0.0.1/32"
    assert environment(any_synth)["PROXY_OPERATOR_CIDRS"] == expected


def test_fetch_limit_and_spool_budget_follow_from_the_task_size(any_synth: Synthesized) -> None:
    env = environment(any_synth)
    if any_synth.name == "custom":
        # 4 GiB of memory fits 64 fetches; 100 GiB of disk at 2 GiB a fetch fits 47
        expected = ("47", "95GiB", "1GiB", "4GiB")
    else:
        # 2 GiB of memory fits 44 fetches; 40 GiB of disk at 1 GiB a fetch fits 35
        expected = ("35", "35GiB", "1GiB", "2GiB")
    found = tuple(
        env[name]
        for name in (
            "PROXY_MAX_UPSTREAM_FETCHES",
            "PROXY_SPOOL_MAX_SIZE",
            "PROXY_SPOOL_MIN_FREE",
            "PROXY_MEMORY_LIMIT",
        )
    )
    assert found == expected


def test_the_proxy_accepts_the_derived_sizes_on_the_task_it_gets(any_synth: Synthesized) -> None:
    """The proxy's own start-up checks pass with these sizes on a filesystem of the task's
    ephemeral storage, and would refuse the old fixed 64 fetches on the default task."""
    config = importlib.import_module("proxy.config")
    startup = importlib.import_module("proxy.commands.startup")
    spool = importlib.import_module("proxy.cache.spool")
    env = {
        name: value
        for name, value in environment(any_synth).items()
        if name.startswith("PROXY_") and name != "PROXY_STORAGE"
    }
    settings = config.load_settings({**env, "PROXY_STORAGE": "s3://bucket/cache"})
    ephemeral = any_synth.only("AWS::ECS::TaskDefinition")["EphemeralStorage"]["SizeInGiB"]
    blocks = ephemeral * 1024**3 // 4096
    disk = os.statvfs_result((4096, 4096, blocks, blocks, blocks, 0, 0, 0, 0, 255))
    startup.check_memory(settings)
    startup.check_spool_size(settings, spool.spool_location(settings), lambda _: disk)
    if any_synth.name == "default":
        with pytest.raises(startup.StartupError, match="PROXY_MAX_UPSTREAM_FETCHES=64"):
            startup.check_memory(
                config.load_settings(
                    {**env, "PROXY_STORAGE": "s3://b/c", "PROXY_MAX_UPSTREAM_FETCHES": "64"}
                )
            )


def test_sizing_figures_are_the_proxys() -> None:
    startup = importlib.import_module("proxy.commands.startup")
    from registry_proxy_infra import sizing

    assert sizing.BASE_MEMORY_MIB * 1024**2 == startup.BASE_MEMORY
    assert sizing.S3_FETCH_MEMORY_MIB * 1024**2 == startup.S3_FETCH_MEMORY


def test_container_environment_is_understood_by_the_proxy(any_synth: Synthesized) -> None:
    """Every variable is one the proxy reads, and together they load as valid settings."""
    config = importlib.import_module("proxy.config")
    env = environment(any_synth)
    names = set(env) | set(secrets(any_synth))
    unknown = {name for name in names if name.startswith("PROXY_")} - set(config.ENV_VARS)
    assert not unknown, f"the proxy does not read {sorted(unknown)}"
    assert {name for name in names if not name.startswith("PROXY_")} == {"AWS_DEFAULT_REGION"}
    resolved = {
        name: "s3://example-cache-bucket/cache" if name == "PROXY_STORAGE" else value
        for name, value in env.items()
        if name.startswith("PROXY_")
    }
    assert all(isinstance(value, str) for value in resolved.values()), resolved
    resolved |= {"PROXY_UPSTREAM_USERNAME": "builder", "PROXY_UPSTREAM_PASSWORD": "dckr_pat_x"}
    settings = config.load_settings(resolved)
    assert settings.storage.location.bucket == "example-cache-bucket"
    assert settings.storage.location.prefix == "cache"
    assert settings.listen.port == 5000
    assert settings.operations.log_format == "json"


def test_extra_environment_is_passed_through(custom_synth: Synthesized) -> None:
    assert environment(custom_synth)["PROXY_UPSTREAM_READ_TIMEOUT"] == "120"


def test_image_comes_from_ecr_by_the_tag_given(default_synth: Synthesized) -> None:
    image = container(default_synth)["Image"]
    rendered = json.dumps(image)
    assert ".dkr.ecr.eu-west-1." in rendered
    assert rendered.endswith(f'/registry-proxy:{IMAGE_TAG}"]]}}')


def test_image_comes_from_ecr_by_the_digest_given(tmp_path: Path) -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    context = {**REQUIRED_CONTEXT, "imageTag": None, "imageDigest": digest}
    synth = synthesize("digest", context, tmp_path)
    rendered = json.dumps(container(synth)["Image"])
    assert rendered.endswith(f'/registry-proxy@{digest}"]]}}')


def test_image_uri_is_used_verbatim(custom_synth: Synthesized) -> None:
    assert container(custom_synth)["Image"] == CUSTOM_CONTEXT["imageUri"]


# ---------------------------------------------------------------------------- IAM


ECS_EXEC_STATEMENT: dict[str, Any] = {
    "Action": [
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
    ],
    "Effect": "Allow",
    "Resource": "*",
}


def test_task_role_reaches_only_the_cache_bucket(any_synth: Synthesized) -> None:
    bucket = cache_bucket_id(any_synth)
    found = statements(any_synth, role_id(any_synth, "TaskRoleArn"))
    if any_synth.name == "custom":  # ecsExec: the session channel, and nothing else
        assert ECS_EXEC_STATEMENT in found
        found.remove(ECS_EXEC_STATEMENT)
    objects = {"Fn::Join": ["", [arn_of(bucket), "/cache/*"]]}
    assert sorted(found, key=lambda statement: statement["Sid"]) == [
        {
            "Action": "s3:ListBucket",
            "Effect": "Allow",
            "Resource": arn_of(bucket),
            "Sid": "CacheBucketList",
        },
        {
            "Action": sorted(S3_CACHE_ACTIONS),
            "Effect": "Allow",
            "Resource": objects,
            "Sid": "CacheObjects",
        },
    ]
    role = any_synth.resources("AWS::IAM::Role")[role_id(any_synth, "TaskRoleArn")]["Properties"]
    assert "ManagedPolicyArns" not in role
    assert "Policies" not in role


def test_task_role_trusts_only_ecs_tasks_of_this_account(any_synth: Synthesized) -> None:
    role = any_synth.resources("AWS::IAM::Role")[role_id(any_synth, "TaskRoleArn")]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")}},
            "Effect": "Allow",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
        }
    ]


def test_no_wildcard_resource_except_ecr_authorization(any_synth: Synthesized) -> None:
    """``*`` appears only where AWS allows nothing else: ecr:GetAuthorizationToken, and the
    ECS Exec session channel when ecsExec is on."""
    for policy in any_synth.resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            resources = statement["Resource"]
            resources = resources if isinstance(resources, list) else [resources]
            if "*" in resources:
                allowed: list[Any] = ["ecr:GetAuthorizationToken"]
                if any_synth.name == "custom":  # ecsExec
                    allowed.append(ECS_EXEC_STATEMENT["Action"])
                assert statement["Action"] in allowed, statement
    if any_synth.name == "custom":  # a public image: no ECR permissions at all
        assert "ecr:" not in json.dumps(any_synth.resources("AWS::IAM::Policy"))


# ---------------------------------------------------------------------------- load balancer


def test_load_balancer_is_internal_with_a_long_idle_timeout(any_synth: Synthesized) -> None:
    balancer = any_synth.only("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert balancer["Scheme"] == "internal"
    attributes = {item["Key"]: item["Value"] for item in balancer["LoadBalancerAttributes"]}
    assert 600 <= int(attributes["idle_timeout.timeout_seconds"]) <= 4000
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["access_logs.s3.enabled"] == "true"


def test_only_listener_is_https_with_the_certificate_of_the_settings(
    any_synth: Synthesized,
) -> None:
    """The certificate is a setting, not a CloudFormation parameter: the CLI would reuse a
    parameter's previous value on redeploy, silently ignoring a changed setting."""
    listener = any_synth.only("AWS::ElasticLoadBalancingV2::Listener")
    assert listener["Protocol"] == "HTTPS"
    assert listener["Port"] == 443
    assert listener["Certificates"] == [{"CertificateArn": CERTIFICATE_ARN}]
    assert listener["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    assert "CertificateArn" not in any_synth.json.get("Parameters", {})


def test_target_group_checks_the_tasks_own_ability_to_serve(any_synth: Synthesized) -> None:
    """/healthz/local (liveness plus a writable spool), not /readyz (which fails on S3, shared by
    every task); a deregistration delay long enough for large downloads to finish."""
    any_synth.template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::TargetGroup",
        {
            "HealthCheckPath": "/healthz/local",
            "HealthCheckTimeoutSeconds": 5,
            "HealthCheckIntervalSeconds": 15,
            "Matcher": {"HttpCode": "200"},
            "Port": 5000,
            "Protocol": "HTTP",
            "TargetType": "ip",
            "TargetGroupAttributes": Match.array_with(
                [{"Key": "deregistration_delay.timeout_seconds", "Value": "300"}]
            ),
        },
    )


def test_default_ingress_is_the_vpc_only(default_synth: Synthesized) -> None:
    group = default_synth.resources("AWS::EC2::SecurityGroup")[
        group_id(default_synth, default_synth.stack.load_balancer.security_group)
    ]
    assert group["Properties"]["SecurityGroupIngress"] == [
        {
            "CidrIp": "10.80.0.0/16",
            "Description": "HTTPS from inside the VPC",
            "FromPort": 443,
            "IpProtocol": "tcp",
            "ToPort": 443,
        }
    ]


def test_ingress_is_limited_to_the_given_networks(custom_synth: Synthesized) -> None:
    balancer_group = group_id(custom_synth, custom_synth.stack.load_balancer.security_group)
    inline = custom_synth.resources("AWS::EC2::SecurityGroup")[balancer_group]["Properties"]
    sources = [
        (rule.get("CidrIp") or rule.get("SourceSecurityGroupId"), rule["FromPort"], rule["ToPort"])
        for rule in inline["SecurityGroupIngress"]
    ]
    assert sorted(sources) == [
        ("10.50.0.0/16", 443, 443),
        ("10.51.0.0/16", 443, 443),
        ("sg-0123456789abcdef0", 443, 443),
    ]
    into_balancer = [
        ingress
        for ingress in custom_synth.resources("AWS::EC2::SecurityGroupIngress").values()
        if ingress["Properties"]["GroupId"] == {"Fn::GetAtt": [balancer_group, "GroupId"]}
    ]
    assert into_balancer == []


def test_nothing_is_open_to_the_world(any_synth: Synthesized) -> None:
    rules: list[dict[str, Any]] = []
    for group in any_synth.resources("AWS::EC2::SecurityGroup").values():
        rules.extend(group["Properties"].get("SecurityGroupIngress", []))
    rules.extend(
        ingress["Properties"]
        for ingress in any_synth.resources("AWS::EC2::SecurityGroupIngress").values()
    )
    assert rules
    for rule in rules:
        assert rule.get("CidrIp") != "0.0.0.0/0", rule
        assert "CidrIpv6" not in rule, rule


def test_tasks_accept_traffic_only_from_the_load_balancer(any_synth: Synthesized) -> None:
    service_group = group_id(any_synth, any_synth.stack.proxy.security_group)
    balancer_group = group_id(any_synth, any_synth.stack.load_balancer.security_group)
    inline = any_synth.resources("AWS::EC2::SecurityGroup")[service_group]["Properties"]
    assert "SecurityGroupIngress" not in inline
    into_service = [
        ingress["Properties"]
        for ingress in any_synth.resources("AWS::EC2::SecurityGroupIngress").values()
        if ingress["Properties"]["GroupId"] == {"Fn::GetAtt": [service_group, "GroupId"]}
    ]
    assert into_service == [
        {
            "Description": "Load balancer to target",
            "FromPort": 5000,
            "GroupId": {"Fn::GetAtt": [service_group, "GroupId"]},
            "IpProtocol": "tcp",
            "SourceSecurityGroupId": {"Fn::GetAtt": [balancer_group, "GroupId"]},
            "ToPort": 5000,
        }
    ]
    assert inline["SecurityGroupEgress"] == [
        {
            "CidrIp": "0.0.0.0/0",
            "Description": "HTTPS to the upstream registry (via NAT) and to AWS APIs and S3",
            "FromPort": 443,
            "IpProtocol": "tcp",
            "ToPort": 443,
        }
    ]


# ---------------------------------------------------------------------------- logs and outputs


def test_log_group_has_retention_and_receives_container_logs(any_synth: Synthesized) -> None:
    log_group = any_synth.logical_id("AWS::Logs::LogGroup")
    expected = 90 if any_synth.name == "custom" else 30
    assert any_synth.only("AWS::Logs::LogGroup")["RetentionInDays"] == expected
    logging = container(any_synth)["LogConfiguration"]
    assert logging["LogDriver"] == "awslogs"
    assert logging["Options"]["awslogs-group"] == ref(log_group)
    assert logging["Options"]["mode"] == "non-blocking"


def test_mirror_url_output_is_the_domain_name_never_the_load_balancers(
    any_synth: Synthesized,
) -> None:
    """No certificate covers the load balancer's own name: a MirrorUrl on it fails every build."""
    any_synth.template.has_output("MirrorUrl", {"Value": f"https://{DOMAIN_NAME}"})
    balancer = any_synth.logical_id("AWS::ElasticLoadBalancingV2::LoadBalancer")
    any_synth.template.has_output(
        "LoadBalancerDnsName", {"Value": {"Fn::GetAtt": [balancer, "DNSName"]}}
    )


def test_domain_name_gets_an_alias_record(custom_synth: Synthesized) -> None:
    balancer = custom_synth.logical_id("AWS::ElasticLoadBalancingV2::LoadBalancer")
    record = custom_synth.only("AWS::Route53::RecordSet")
    assert record["Name"] == "registry.build.example.com."
    assert record["Type"] == "A"
    assert record["HostedZoneId"] == "Z0123456789ABCDEFGHIJ"
    assert record["AliasTarget"]["DNSName"] == {
        "Fn::Join": ["", ["dualstack.", {"Fn::GetAtt": [balancer, "DNSName"]}]]
    }


def test_default_creates_no_dns_record(default_synth: Synthesized) -> None:
    default_synth.template.resource_count_is("AWS::Route53::RecordSet", 0)


def test_outputs_name_what_operators_need(any_synth: Synthesized) -> None:
    assert set(any_synth.json["Outputs"]) >= {
        "MirrorUrl",
        "LoadBalancerDnsName",
        "LoadBalancerSecurityGroupId",
        "CacheBucketName",
        "ClusterName",
        "ServiceName",
        "LogGroupName",
    }
