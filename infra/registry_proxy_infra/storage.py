"""Storage: the cache bucket and the bucket every access log goes to."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from registry_proxy_infra.cache_gc import cache_lifecycle_rules
from registry_proxy_infra.config import ProxyStackConfig


class AccessLogs:
    """The bucket of S3 server access logs, load balancer access logs and VPC flow logs.

    It logs nothing about itself: that would write a log record for every delivery.  Built into
    ``scope`` under the construct id it has always had (see stack.py); before the VPC, whose flow
    logs it receives.
    """

    def __init__(self, scope: Construct, *, config: ProxyStackConfig) -> None:
        self.bucket = s3.Bucket(
            scope,
            "AccessLogBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,  # ALB access logs accept SSE-S3 only
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-logs",
                    expiration=Duration.days(config.access_log_retention_days),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
        )


class CacheStorage:
    """The cache bucket, built into ``scope`` under the construct id it has always had."""

    def __init__(
        self, scope: Construct, *, config: ProxyStackConfig, log_bucket: s3.IBucket
    ) -> None:
        # Content expires by last use (the proxy's sweeps and ScheduledCacheGc), never by age.
        rules = cache_lifecycle_rules(config.cache_prefix, config.cache_expiration_days)
        self.bucket = s3.Bucket(
            scope,
            "CacheBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            server_access_logs_bucket=log_bucket,
            server_access_logs_prefix="s3-access/cache-bucket/",
            lifecycle_rules=rules,
        )
