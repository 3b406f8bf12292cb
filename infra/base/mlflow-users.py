"""Create the pipeline's MLflow user: not an admin, EDIT on the project's experiment and registered model only.

Runs as the MLflow admin against a basic-auth server whose default permission is NO_PERMISSIONS, so the pipeline
user sees and changes nothing else. Idempotent: an existing user gets the password again, existing permissions
are updated. Used by infra/ (Job mlflow-users, on the project's image) and scripts/pipeline-in-image.sh.

Environment: MLFLOW_TRACKING_URI; MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (the admin);
PIPELINE_USERNAME, PIPELINE_PASSWORD (the user to create); MLFLOW_EXPERIMENT_NAME (default si-beatgan),
SIBEATGAN_MODEL_NAME (default si-beatgan).
"""

from __future__ import annotations

import os
import sys
import time

REQUIRED = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PIPELINE_USERNAME", "PIPELINE_PASSWORD")


def main() -> int:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print(f"mlflow-users: missing environment variable(s) {', '.join(missing)}", file=sys.stderr)
        return 2
    import mlflow
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.server import get_app_client

    uri = os.environ["MLFLOW_TRACKING_URI"]
    user, password = os.environ["PIPELINE_USERNAME"], os.environ["PIPELINE_PASSWORD"]
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "si-beatgan"
    model = os.environ.get("SIBEATGAN_MODEL_NAME") or "si-beatgan"
    if user == os.environ["MLFLOW_TRACKING_USERNAME"]:
        print("mlflow-users: PIPELINE_USERNAME must differ from the admin (MLFLOW_TRACKING_USERNAME)", file=sys.stderr)
        return 2
    auth = get_app_client("basic-auth", tracking_uri=uri)
    for attempt in range(30):  # the server may still be starting
        try:
            auth.get_user(os.environ["MLFLOW_TRACKING_USERNAME"])
            break
        except Exception as err:  # noqa: BLE001 (connection refused, 503 while starting)
            if attempt == 29:
                print(f"mlflow-users: {uri} does not answer as admin ({type(err).__name__}: {str(err).splitlines()[0]})",
                      file=sys.stderr)
                return 1
            time.sleep(2)
    try:
        auth.create_user(user, password)
        print(f"mlflow-users: created user {user}")
    except RestException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.update_user_password(user, password)
        print(f"mlflow-users: user {user} exists; password set again")
    auth.update_user_admin(user, False)

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    try:
        client.create_registered_model(model, description="SI-BeatGAN ECG anomaly detector (registered by the pipeline)")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for resource_type, resource_id in (("experiment", experiment_id), ("registered_model", model)):
        try:
            auth.grant_user_permission(user, resource_type, resource_id, "EDIT")
        except RestException as err:  # granted before, perhaps another permission: set it again
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.revoke_user_permission(user, resource_type, resource_id)
            auth.grant_user_permission(user, resource_type, resource_id, "EDIT")
        print(f"mlflow-users: {user} has EDIT on {resource_type} {resource_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
