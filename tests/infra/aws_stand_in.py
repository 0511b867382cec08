"""``aws`` for a deployment guide's commands: the real AWS CLI, with AWS's answers made up here.

Run by the interpreter of the AWS CLI (Debian's ``awscli``: ``/usr/bin/python3``), as ``python
aws_stand_in.py ARGS...``. The CLI parses the command line, reads ``file://`` arguments, checks
every parameter against the service's model, and applies ``--query`` and ``--output`` to the
answer, exactly as for a user; only the request never leaves: a ``before-call`` handler answers
it instead (an answer the service could give; an error for what it would refuse). So a guide's
command that names an operation or an option that does not exist, misses a required one, or
queries a field the answer does not have, fails or prints what it would print against AWS.

Every call is recorded in ``$GUIDE_STATE/calls.jsonl`` with its parameters as the API receives
them; what the answers depend on (certificates, secrets, projects) is kept in
``$GUIDE_STATE/aws.json``; ``describe-stacks`` answers with the outputs of the last template
the npx stand-in "deployed" (``$GUIDE_STATE/deploys/N``).

Only the standard library and the AWS CLI: this runs outside pytest, in another interpreter.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from awscli.clidriver import create_clidriver  # type: ignore[import-not-found]


def _response_class() -> Any:
    """botocore's AWSResponse: AWS CLI v2 carries its own botocore, v1 uses the package."""
    for module in ("awscli.botocore.awsrequest", "botocore.awsrequest"):
        try:
            return importlib.import_module(module).AWSResponse
        except ImportError:
            continue
    raise ImportError("the AWS CLI's botocore cannot be imported")


AWSResponse = _response_class()

ACCOUNT = "123456789012"
# the deployed stack's VPC, its subnets, and the security group made for the builds
STACK_VPC = "vpc-0a1b2c3d4e5f60718"
STACK_PUBLIC_SUBNETS = ("subnet-0ddddddddddddddd4", "subnet-0eeeeeeeeeeeeeee5")
STACK_PRIVATE_SUBNETS = ("subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2")
BUILDS_GROUP = "sg-0123456789abcdef0"
Answer = Callable[[dict[str, Any], str], dict[str, Any]]


class Refused(Exception):
    """What the service would answer with an error: (code, message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Account:
    """The made-up account's state, kept between calls in ``aws.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "aws.json"
        loaded: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data: dict[str, dict[str, Any]] = {
            key: loaded.get(key, {})
            for key in ("certificates", "records", "secrets", "projects", "policies", "groups")
        }

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2))

    # ------------------------------------------------------------------ answers

    def get_caller_identity(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        arn = f"arn:aws:iam::{ACCOUNT}:user/operator"
        return {"UserId": "AIDAEXAMPLEOPERATOR", "Account": ACCOUNT, "Arn": arn}

    def create_repository(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        name = params["repositoryName"]
        uri = f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{name}"
        repository = {
            "repositoryArn": f"arn:aws:ecr:{region}:{ACCOUNT}:repository/{name}",
            "registryId": ACCOUNT,
            "repositoryName": name,
            "repositoryUri": uri,
            "imageTagMutability": params.get("imageTagMutability", "MUTABLE"),
        }
        return {"repository": repository}

    def get_authorization_token(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        token = base64.b64encode(b"AWS:stand-in-registry-password").decode()
        endpoint = f"https://{ACCOUNT}.dkr.ecr.{region}.amazonaws.com"
        return {"authorizationData": [{"authorizationToken": token, "proxyEndpoint": endpoint}]}

    def request_certificate(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        domain = params["DomainName"]
        names = [domain, *params.get("SubjectAlternativeNames", [])]
        key = hashlib.sha256(f"{region}:{','.join(names)}".encode()).hexdigest()
        arn = f"arn:aws:acm:{region}:{ACCOUNT}:certificate/{key[:8]}-{key[8:12]}-{key[12:16]}"
        arn += f"-{key[16:20]}-{key[20:32]}"
        self.data["certificates"][arn] = {"names": names, "method": params.get("ValidationMethod")}
        return {"CertificateArn": arn}

    def describe_certificate(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        arn = params["CertificateArn"]
        certificate = self.data["certificates"].get(arn)
        if certificate is None:
            raise Refused("ResourceNotFoundException", f"Could not find certificate {arn}.")
        options = []
        for name in certificate["names"]:
            record = validation_record(name)
            validated = record["Name"] in self.data["records"]
            options.append(
                {
                    "DomainName": name,
                    "ValidationMethod": "DNS",
                    # the stand-in never waits: a record not created fails the validation
                    "ValidationStatus": "SUCCESS" if validated else "FAILED",
                    "ResourceRecord": record,
                }
            )
        issued = all(option["ValidationStatus"] == "SUCCESS" for option in options)
        return {
            "Certificate": {
                "CertificateArn": arn,
                "DomainName": certificate["names"][0],
                "SubjectAlternativeNames": certificate["names"],
                "Status": "ISSUED" if issued else "FAILED",
                "Type": "AMAZON_ISSUED",
                "DomainValidationOptions": options,
            }
        }

    def change_resource_record_sets(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        for change in params["ChangeBatch"]["Changes"]:
            record = change["ResourceRecordSet"]
            self.data["records"][record["Name"]] = {
                "zone": params["HostedZoneId"],
                "action": change["Action"],
                "record": record,
            }
        return {"ChangeInfo": {"Id": "/change/C0STANDIN", "Status": "PENDING"}}

    def create_secret(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        name = params["Name"]
        if name in self.data["secrets"] and not self.data["secrets"][name]["deleted"]:
            raise Refused("ResourceExistsException", f"The secret {name} already exists.")
        suffix = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:6]
        arn = f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:{name}-{suffix}"
        self.data["secrets"][name] = {
            "arn": arn,
            "versions": [params.get("SecretString")],
            "deleted": False,
            "description": params.get("Description"),
        }
        return {"ARN": arn, "Name": name, "VersionId": "v1"}

    def _secret(self, secret_id: str) -> dict[str, Any]:
        secrets: dict[str, dict[str, Any]] = self.data["secrets"]
        for name, secret in secrets.items():
            if secret_id in (name, secret["arn"]) and not secret["deleted"]:
                return secret
        raise Refused("ResourceNotFoundException", "Secrets Manager can't find the secret.")

    def put_secret_value(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        secret = self._secret(params["SecretId"])
        secret["versions"].append(params.get("SecretString"))
        version = f"v{len(secret['versions'])}"
        return {"ARN": secret["arn"], "Name": params["SecretId"], "VersionId": version}

    def delete_secret(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        secret = self._secret(params["SecretId"])
        secret["deleted"] = True
        return {"ARN": secret["arn"], "Name": params["SecretId"]}

    def _project(self, name: str, region: str) -> dict[str, Any]:
        project: dict[str, Any] = self.data["projects"].setdefault(
            name,
            {
                "name": name,
                "arn": f"arn:aws:codebuild:{region}:{ACCOUNT}:project/{name}",
                "serviceRole": f"arn:aws:iam::{ACCOUNT}:role/service-role/codebuild-{name}-role",
                "environment": {
                    "type": "LINUX_CONTAINER",
                    "image": "aws/codebuild/standard:7.0",
                    "computeType": "BUILD_GENERAL1_SMALL",
                    "environmentVariables": [],
                    "privilegedMode": False,
                    "imagePullCredentialsType": "CODEBUILD",
                },
            },
        )
        return project

    def batch_get_projects(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        return {
            "projects": [self._project(name, region) for name in params["names"]],
            "projectsNotFound": [],
        }

    def update_project(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        project = self._project(params["name"], region)
        for key in ("environment", "vpcConfig", "serviceRole"):
            if key in params:
                project[key] = params[key]
        return {"project": project}

    def put_role_policy(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        try:
            document = json.loads(params["PolicyDocument"])
        except ValueError as exc:
            raise Refused("MalformedPolicyDocument", f"Syntax errors in policy: {exc}") from None
        self.data["policies"][f"{params['RoleName']}/{params['PolicyName']}"] = document
        return {}

    def describe_stacks(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        name = params.get("StackName")
        deploys = self.directory / "deploys"
        kept = (
            sorted(deploys.iterdir(), key=lambda path: int(path.name)) if deploys.is_dir() else []
        )
        template = kept[-1] / f"{name}.template.json" if kept else None
        if template is None or not template.exists():
            raise Refused("ValidationError", f"Stack with id {name} does not exist")
        outputs = json.loads(template.read_text()).get("Outputs", {})
        listed = [
            {
                "OutputKey": key,
                # a value CloudFormation resolves at deploy time is shown as what it names
                "OutputValue": output["Value"]
                if isinstance(output["Value"], str)
                else f"<{json.dumps(output['Value'])}>",
                **({"Description": output["Description"]} if "Description" in output else {}),
            }
            for key, output in outputs.items()
        ]
        stack = {"StackName": name, "StackStatus": "UPDATE_COMPLETE", "Outputs": listed}
        return {"Stacks": [stack]}

    def _deployed_stack(self, name: str) -> bool:
        deploys = self.directory / "deploys"
        return deploys.is_dir() and any(
            (kept / f"{name}.template.json").exists() for kept in deploys.iterdir()
        )

    def describe_vpcs(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        """The stack's VPC, found by the tag CloudFormation puts on what it creates."""
        filters = {item["Name"]: item["Values"] for item in params.get("Filters", [])}
        stacks = filters.get("tag:aws:cloudformation:stack-name", [])
        found = [name for name in stacks if self._deployed_stack(name)]
        vpcs = [{"VpcId": STACK_VPC, "CidrBlock": "10.80.0.0/16", "State": "available"}]
        return {"Vpcs": vpcs if found else []}

    def describe_subnets(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        """The stack's VPC's subnets, two a kind, tagged as the CDK tags them."""
        filters = {item["Name"]: item["Values"] for item in params.get("Filters", [])}
        subnets = []
        for kind, ids in (("Public", STACK_PUBLIC_SUBNETS), ("Private", STACK_PRIVATE_SUBNETS)):
            for subnet_id in ids:
                tags = {"aws-cdk:subnet-type": kind}
                if filters.get("vpc-id", [STACK_VPC]) != [STACK_VPC]:
                    continue
                if filters.get("tag:aws-cdk:subnet-type", [kind]) != [kind]:
                    continue
                subnets.append(
                    {
                        "SubnetId": subnet_id,
                        "VpcId": STACK_VPC,
                        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                    }
                )
        return {"Subnets": subnets}

    def create_security_group(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        if params.get("VpcId") != STACK_VPC:
            raise Refused(
                "InvalidVpcID.NotFound", f"The vpc ID {params.get('VpcId')!r} does not exist"
            )
        self.data["groups"][params["GroupName"]] = params
        return {"GroupId": BUILDS_GROUP}

    def update_service(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        return {"service": {"serviceName": params["service"], "status": "ACTIVE"}}


def validation_record(name: str) -> dict[str, str]:
    """The CNAME ACM asks for to validate ``name`` (a wildcard's is its base name's)."""
    base = name.removeprefix("*.")
    token = hashlib.sha256(base.encode()).hexdigest()
    return {
        "Name": f"_{token[:32]}.{base}.",
        "Type": "CNAME",
        "Value": f"_{token[32:]}.acm-validations.aws.",
    }


def snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def main() -> int:
    directory = Path(os.environ["GUIDE_STATE"])
    account = Account(directory)
    calls: dict[str, dict[str, Any]] = {}

    def parameters(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls[model.name] = dict(params)

    def answer(model: Any, context: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        service = model.service_model.service_name
        params = calls.get(model.name, {})
        region = context.get("client_region") or ""
        entry = {
            "program": "aws",
            "argv": sys.argv[1:],
            "service": service,
            "operation": model.name,
            "params": params,
            "region": region,
        }
        with (directory / "calls.jsonl").open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry, default=str) + "\n")
        handler: Answer | None = getattr(account, snake(model.name), None)
        if handler is None:
            message = f"stand-in aws: no answer made up for {service} {model.name}"
            return AWSResponse(None, 400, {}, None), {
                "Error": {"Code": "StandInHasNoAnswer", "Message": message}
            }
        try:
            body = handler(params, region)
        except Refused as refused:
            return AWSResponse(None, 400, {}, None), {
                "Error": {"Code": refused.code, "Message": str(refused)}
            }
        account.save()
        return AWSResponse(None, 200, {}, None), body

    driver = create_clidriver()
    driver.session.register("before-parameter-build", parameters)
    driver.session.register("before-call", answer)
    status: int = driver.main(sys.argv[1:])
    return status


if __name__ == "__main__":
    sys.exit(main())
