"""The synthesized template has each property issue 5 asks of the deployment."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Match
from registry_proxy_infra.stack import S3_CACHE_ACTIONS

from .scenarios import CERTIFICATE_ARN, CUSTOM_CONTEXT, SECRET_ARN, Synthesized

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
    return synth.stack.resolve(synth.stack.cache_bucket.bucket_name)["Ref"]  # type: ignore[no-any-return]


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
        {"Fn::GetAtt": [group_id(any_synth, any_synth.stack.service_security_group), "GroupId"]}
    ]
    overrides = json.loads(target["Input"])["containerOverrides"]
    assert overrides == [{"name": "proxy", "command": ["cache", "gc"]}]


# ---------------------------------------------------------------------------- credentials


def test_docker_hub_credentials_reach_the_task_only_as_ecs_secrets(
    any_synth: Synthesized,
) -> None:
    values = secrets(any_synth)
    assert set(values) == {"PROXY_UPSTREAM_USERNAME", "PROXY_UPSTREAM_PASSWORD"}
    if any_synth.name == "custom":
        assert values["PROXY_UPSTREAM_USERNAME"] == f"{SECRET_ARN}:username::"
        assert values["PROXY_UPSTREAM_PASSWORD"] == f"{SECRET_ARN}:token::"
    else:
        secret = ref(any_synth.logical_id("AWS::SecretsManager::Secret"))
        assert values["PROXY_UPSTREAM_USERNAME"] == {"Fn::Join": ["", [secret, ":username::"]]}
        assert values["PROXY_UPSTREAM_PASSWORD"] == {"Fn::Join": ["", [secret, ":token::"]]}
    names = set(environment(any_synth))
    assert not names & {"PROXY_UPSTREAM_USERNAME", "PROXY_UPSTREAM_PASSWORD"}


def test_new_secret_holds_no_credential_in_the_template(default_synth: Synthesized) -> None:
    secret = default_synth.only("AWS::SecretsManager::Secret")
    assert json.loads(secret["SecretString"]) == {"username": "", "token": ""}


def test_existing_secret_is_referenced_not_created(custom_synth: Synthesized) -> None:
    custom_synth.template.resource_count_is("AWS::SecretsManager::Secret", 0)


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


def test_cluster_has_container_insights(any_synth: Synthesized) -> None:
    assert any_synth.only("AWS::ECS::Cluster")["ClusterSettings"] == [
        {"Name": "containerInsights", "Value": "enabled"}
    ]


def test_fargate_service_runs_at_least_two_tasks_with_rollback(any_synth: Synthesized) -> None:
    service = any_synth.only("AWS::ECS::Service")
    assert service["LaunchType"] == "FARGATE"
    assert service["DesiredCount"] >= 2
    assert service["DeploymentConfiguration"] == {
        "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True},
        "MaximumPercent": 200,
        "MinimumHealthyPercent": 100,
    }
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def test_service_scales_on_cpu(any_synth: Synthesized) -> None:
    target = any_synth.only("AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert target["MinCapacity"] >= 2
    assert target["MaxCapacity"] > target["MinCapacity"]
    policy = any_synth.only("AWS::ApplicationAutoScaling::ScalingPolicy")
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "ECSServiceAverageCPUUtilization"
    }
    expected = 50 if any_synth.name == "custom" else 60
    assert tracking["TargetValue"] == expected


def test_custom_task_counts(custom_synth: Synthesized) -> None:
    assert custom_synth.only("AWS::ECS::Service")["DesiredCount"] == 3
    target = custom_synth.only("AWS::ApplicationAutoScaling::ScalableTarget")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (3, 10)


def test_container_listens_on_5000_with_a_read_only_root(any_synth: Synthesized) -> None:
    proxy = container(any_synth)
    assert proxy["PortMappings"] == [{"ContainerPort": 5000, "Name": "http", "Protocol": "tcp"}]
    assert proxy["ReadonlyRootFilesystem"] is True
    assert proxy["MountPoints"] == [
        {"ContainerPath": "/tmp", "ReadOnly": False, "SourceVolume": "spool"}
    ]
    # ECS waits this long after SIGTERM: the drain grace plus a margin, within Fargate's cap.
    grace = int(environment(any_synth)["PROXY_SHUTDOWN_GRACE"])
    assert grace < proxy["StopTimeout"] <= 120


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
    assert env["PROXY_SPOOL_DIR"] == "/tmp"
    # longer than the load balancer's idle timeout (900 s), so the balancer closes first
    assert env["PROXY_CLIENT_IDLE_TIMEOUT"] == "930"
    # X-Forwarded-For is trusted from the VPC, where only the load balancer reaches the tasks
    vpc = "10.40.0.0/16" if any_synth.name == "custom" else "10.80.0.0/16"
    assert env["PROXY_TRUSTED_PROXIES"] == vpc
    expected_redirect = "true" if any_synth.name == "custom" else "false"
    assert env["PROXY_BLOB_REDIRECT"] == expected_redirect


def test_container_environment_is_understood_by_the_proxy(any_synth: Synthesized) -> None:
    """Every variable is one the proxy reads, and together they load as valid settings."""
    config = pytest.importorskip("proxy.config")
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
    assert settings.storage.bucket == "example-cache-bucket"
    assert settings.storage.prefix == "cache"
    assert settings.listen_port == 5000
    assert settings.log_format == "json"


def test_extra_environment_is_passed_through(custom_synth: Synthesized) -> None:
    assert environment(custom_synth)["PROXY_UPSTREAM_READ_TIMEOUT"] == "120"


def test_image_comes_from_ecr_by_default(default_synth: Synthesized) -> None:
    image = container(default_synth)["Image"]
    rendered = json.dumps(image)
    assert ".dkr.ecr.eu-west-1." in rendered
    assert "/registry-proxy:latest" in rendered


def test_image_uri_is_used_verbatim(custom_synth: Synthesized) -> None:
    assert container(custom_synth)["Image"] == CUSTOM_CONTEXT["imageUri"]


# ---------------------------------------------------------------------------- IAM


def test_task_role_reaches_only_the_cache_bucket(any_synth: Synthesized) -> None:
    bucket = cache_bucket_id(any_synth)
    found = statements(any_synth, role_id(any_synth, "TaskRoleArn"))
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
    """``*`` appears only where AWS allows nothing else: ecr:GetAuthorizationToken."""
    for policy in any_synth.resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            resources = statement["Resource"]
            resources = resources if isinstance(resources, list) else [resources]
            if "*" in resources:
                assert statement["Action"] == "ecr:GetAuthorizationToken", statement
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


def test_only_listener_is_https_with_the_certificate_parameter(any_synth: Synthesized) -> None:
    listener = any_synth.only("AWS::ElasticLoadBalancingV2::Listener")
    assert listener["Protocol"] == "HTTPS"
    assert listener["Port"] == 443
    assert listener["Certificates"] == [{"CertificateArn": ref("CertificateArn")}]
    assert listener["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    parameter = any_synth.json["Parameters"]["CertificateArn"]
    assert parameter["Type"] == "String"
    if any_synth.name == "custom":
        assert parameter["Default"] == CERTIFICATE_ARN
    else:
        assert "Default" not in parameter  # cdk deploy --parameters CertificateArn=...


def test_target_group_checks_readiness(any_synth: Synthesized) -> None:
    any_synth.template.has_resource_properties(
        "AWS::ElasticLoadBalancingV2::TargetGroup",
        {
            "HealthCheckPath": "/readyz",
            "HealthCheckTimeoutSeconds": 10,
            "HealthCheckIntervalSeconds": 20,
            "Matcher": {"HttpCode": "200"},
            "Port": 5000,
            "Protocol": "HTTP",
            "TargetType": "ip",
            "TargetGroupAttributes": Match.array_with(
                [{"Key": "deregistration_delay.timeout_seconds", "Value": "120"}]
            ),
        },
    )


def test_default_ingress_is_the_vpc_only(default_synth: Synthesized) -> None:
    group = default_synth.resources("AWS::EC2::SecurityGroup")[
        group_id(default_synth, default_synth.stack.load_balancer_security_group)
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
    balancer_group = group_id(custom_synth, custom_synth.stack.load_balancer_security_group)
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
    service_group = group_id(any_synth, any_synth.stack.service_security_group)
    balancer_group = group_id(any_synth, any_synth.stack.load_balancer_security_group)
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


def test_mirror_url_output_uses_the_load_balancer_name(default_synth: Synthesized) -> None:
    balancer = default_synth.logical_id("AWS::ElasticLoadBalancingV2::LoadBalancer")
    default_synth.template.has_output(
        "MirrorUrl",
        {"Value": {"Fn::Join": ["", ["https://", {"Fn::GetAtt": [balancer, "DNSName"]}]]}},
    )


def test_mirror_url_output_uses_the_domain_name(custom_synth: Synthesized) -> None:
    custom_synth.template.has_output("MirrorUrl", {"Value": "https://registry.build.example.com"})


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
        "DockerHubSecretArn",
        "ClusterName",
        "ServiceName",
        "LogGroupName",
    }
