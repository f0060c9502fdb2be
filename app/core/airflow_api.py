"""Airflow 3's REST API (`/api/v2`) as the lab's login sees it: the console's Airflow hop and the
Airflow runner's one line per finished task read it through `AirflowClient`."""

from __future__ import annotations

from typing import Any

import httpx

from app.core.config import Settings


class AirflowClient:
    """Airflow 3's REST API (`/api/v2`) with a JWT from `/auth/token`, renewed when refused."""

    def __init__(self, settings: Settings, client: httpx.Client) -> None:
        self.settings = settings
        self.client = client
        self.token: str | None = None

    def _login(self) -> str:
        response = self.client.post(
            f"{self.settings.airflow_url}/auth/token",
            json={
                "username": self.settings.airflow_admin_user,
                "password": self.settings.airflow_admin_password,
            },
            timeout=3,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def _get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        if self.token is None:
            self.token = self._login()
        return self.client.get(
            f"{self.settings.airflow_url}/api/v2{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=3,
        )

    def get(self, path: str, **params: Any) -> Any:
        response = self._get(path, params)
        # 401: the token expired; 403: Airflow no longer knows it (restarted with a new JWT
        # secret). Either way one new login, and a second refusal is the answer.
        if response.status_code in (401, 403):
            self.token = None
            response = self._get(path, params)
        response.raise_for_status()
        return response.json()
