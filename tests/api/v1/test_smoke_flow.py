import httpx

from tests.conftest import PASSWORD, bearer, login


async def test_register_login_and_read_me(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "ada@example.com", "name": "Ada", "password": PASSWORD},
    )
    assert response.status_code == 201, response.text
    tokens = await login(client, "ada@example.com")
    me = await client.get("/api/v1/users/me", headers=bearer(tokens))
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com"
    assert "hashed_password" not in me.json()
