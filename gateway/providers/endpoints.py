"""Where a call goes: an adapter's ``Endpoint`` built from a catalog deployment and its
decrypted credential (the snapshot caches the decryption)."""

from __future__ import annotations

from gateway.providers.types import Endpoint
from routing.catalog import CatalogSnapshot, DeploymentInfo


def endpoint_for(snapshot: CatalogSnapshot, deployment: DeploymentInfo) -> Endpoint:
    secret = (
        snapshot.credential_secret(deployment.credential_id) if deployment.credential_id else None
    )
    return Endpoint(
        kind=deployment.kind,  # type: ignore[arg-type]
        base_url=deployment.base_url,
        model=deployment.provider_model_name,
        api_key=secret.api_key if secret else "",
        api_version=deployment.api_version,
        region=deployment.region,
        aws_access_key_id=secret.aws_access_key_id if secret else None,
        aws_secret_access_key=secret.aws_secret_access_key if secret else None,
        aws_session_token=secret.aws_session_token if secret else None,
        headers=deployment.headers,
        deployment_id=deployment.id,
    )
