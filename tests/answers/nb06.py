"""Answers to notebook 06: wrong answers with the words their verdict must hold."""

import time

import jwt


def authorize_without_verifying(headers, public_key, audience, role):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    if role not in claims.get("roles", []):
        return 403, "missing role"
    return 200, claims


def authorize_403_without_token(headers, public_key, audience, role):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 403, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience)
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    if role not in claims.get("roles", []):
        return 403, "missing role"
    return 200, claims


def authorize_many_algorithms(headers, public_key, audience, role):
    # Subtle: HS256 is accepted too, and only InvalidTokenError is caught.
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA", "HS256"], audience=audience,
                            options={"require": ["sub"]})
    except jwt.InvalidTokenError as exc:
        return 401, str(exc)
    if role not in claims.get("roles", []):
        return 403, "missing role"
    return 200, claims


def authorize_any_audience(headers, public_key, audience, role):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"],
                            options={"verify_aud": False, "require": ["sub"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    if role not in claims.get("roles", []):
        return 403, "missing role"
    return 200, claims


def authorize_ignores_expiry(headers, public_key, audience, role):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience,
                            options={"verify_exp": False, "require": ["sub"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    if role not in claims.get("roles", []):
        return 403, "missing role"
    return 200, claims


def authorize_last_word(headers, public_key, audience, role):
    words = headers.get("Authorization", "").split()
    if not words:
        return 401, "no token"
    try:
        claims = jwt.decode(words[-1], public_key, algorithms=["EdDSA"], audience=audience,
                            options={"require": ["sub"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    if role not in claims.get("roles", []):
        return 403, "missing role"
    return 200, claims


def authorize_sub_optional(headers, public_key, audience, role):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience)
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    if role not in claims.get("roles", []):
        return 403, "missing role"
    return 200, claims


def authorize_forbids_invalid(headers, public_key, audience, role):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience,
                            options={"require": ["sub"]})
    except jwt.PyJWTError as exc:
        return 403, str(exc)
    if role not in claims.get("roles", []):
        return 403, "missing role"
    return 200, claims


def notes_signing_in_every_time(client, auth_url, notes_url, credentials, token):
    answer = client.post(auth_url + "/login", json=credentials)
    if answer.status_code != 200:
        return None, None
    token = answer.json()["token"]
    response = client.get(notes_url + "/notes", headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        return None, token
    return response.json()["notes"], token


def notes_retrying_any_refusal(client, auth_url, notes_url, credentials, token):
    for _ in range(2):
        if token is None:
            answer = client.post(auth_url + "/login", json=credentials)
            if answer.status_code != 200:
                return None, None
            token = answer.json()["token"]
        response = client.get(notes_url + "/notes", headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 200:
            return response.json()["notes"], token
        token = None  # 401 or 403: sign in again
    return None, token


def notes_without_renewal(client, auth_url, notes_url, credentials, token):
    if token is None:
        answer = client.post(auth_url + "/login", json=credentials)
        if answer.status_code != 200:
            return None, None
        token = answer.json()["token"]
    response = client.get(notes_url + "/notes", headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        return None, token
    return response.json()["notes"], token


def notes_hammering_sign_in(client, auth_url, notes_url, credentials, token):
    if token is None:
        for _ in range(20):
            answer = client.post(auth_url + "/login", json=credentials)
            if answer.status_code != 429:
                break
        if answer.status_code != 200:
            return None, None
        token = answer.json()["token"]
    response = client.get(notes_url + "/notes", headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 401:
        return notes_hammering_sign_in(client, auth_url, notes_url, credentials, None)
    if response.status_code != 200:
        return None, token
    return response.json()["notes"], token


def notes_short_wait(client, auth_url, notes_url, credentials, token):
    # Subtle: it does wait after a 429, but a fixed 0.2 s instead of what Retry-After says.
    if token is None:
        for _ in range(3):
            answer = client.post(auth_url + "/login", json=credentials)
            if answer.status_code != 429:
                break
            time.sleep(0.2)
        if answer.status_code != 200:
            return None, None
        token = answer.json()["token"]
    response = client.get(notes_url + "/notes", headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 401:
        return notes_short_wait(client, auth_url, notes_url, credentials, None)
    if response.status_code != 200:
        return None, token
    return response.json()["notes"], token


WRONG = [
    ("q6.1", authorize_without_verifying,
     ["a token whose payload was edited (bob made himself admin): it returned status 200, expected 401",
      "never with options={\"verify_signature\": False}"]),
    ("q6.1", authorize_403_without_token,
     ["a request with no Authorization header: it returned status 403, expected 401", "401 Unauthorized"]),
    ("q6.1", authorize_many_algorithms,
     ["algorithm confusion", "your answer raised InvalidKeyError", "pin the algorithm you accept"]),
    ("q6.1", authorize_any_audience,
     ["a token for the billing service (aud 'billing'): it returned status 200, expected 401",
      "pass audience=audience"]),
    ("q6.1", authorize_ignores_expiry,
     ["a token that expired 59 minutes ago: it returned status 200, expected 401", "ExpiredSignatureError"]),
    ("q6.1", authorize_last_word,
     ["the token without the 'Bearer ' prefix: it returned status 200, expected 401", "Bearer <token>"]),
    ("q6.1", authorize_sub_optional,
     ["a token without sub (it names nobody): it returned status 200, expected 401", '"require"']),
    ("q6.1", authorize_forbids_invalid,
     ["the token 'not-a-token': it returned status 403, expected 401"]),
    ("q6.2", notes_signing_in_every_time,
     ["with bob's valid token: it signed in 1 time(s), expected 0", "reuse the token"]),
    ("q6.2", notes_retrying_any_refusal,
     ["zed (no roles) with a valid token: it signed in 1 time(s), expected 0", "a 403 means"]),
    ("q6.2", notes_without_renewal,
     ["with alice's token that expired an hour ago: it returned no notes", "sign in again, then retry once"]),
    ("q6.2", notes_hammering_sign_in,
     ["while alice is locked out for 1 s: it made more than 3 sign-in attempts", "Retry-After"]),
    ("q6.2", notes_short_wait,
     ["it signed in again before the 1 s of Retry-After had passed", 'headers["Retry-After"]']),
]
