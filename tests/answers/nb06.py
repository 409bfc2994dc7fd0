"""Answers to notebook 06: wrong answers with the words their verdict must hold."""

import email.utils
import time

import jwt


def authorize_without_verifying(headers, public_key, audience, role, issuer):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return 401, "roles is not a list of strings"
    if role not in roles:
        return 403, "missing role"
    return 200, claims


def authorize_403_without_token(headers, public_key, audience, role, issuer):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 403, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience, issuer=issuer,
                            options={"require": ["sub", "roles", "aud", "iss", "exp"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return 401, "roles is not a list of strings"
    if role not in roles:
        return 403, "missing role"
    return 200, claims


def authorize_many_algorithms(headers, public_key, audience, role, issuer):
    # Subtle: HS256 is accepted too, and only InvalidTokenError is caught.
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA", "HS256"], audience=audience, issuer=issuer,
                            options={"require": ["sub", "roles", "aud", "iss", "exp"]})
    except jwt.InvalidTokenError as exc:
        return 401, str(exc)
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return 401, "roles is not a list of strings"
    if role not in roles:
        return 403, "missing role"
    return 200, claims


def authorize_any_audience(headers, public_key, audience, role, issuer):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], issuer=issuer,
                            options={"verify_aud": False, "require": ["sub", "roles", "iss", "exp"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return 401, "roles is not a list of strings"
    if role not in roles:
        return 403, "missing role"
    return 200, claims


def authorize_ignores_expiry(headers, public_key, audience, role, issuer):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience, issuer=issuer,
                            options={"verify_exp": False, "require": ["sub", "roles", "aud", "iss"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return 401, "roles is not a list of strings"
    if role not in roles:
        return 403, "missing role"
    return 200, claims


def authorize_last_word(headers, public_key, audience, role, issuer):
    words = headers.get("Authorization", "").split()
    if not words:
        return 401, "no token"
    token = words[-1]
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience, issuer=issuer,
                            options={"require": ["sub", "roles", "aud", "iss", "exp"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return 401, "roles is not a list of strings"
    if role not in roles:
        return 403, "missing role"
    return 200, claims


def authorize_ignores_issuer(headers, public_key, audience, role, issuer):
    # Subtle: everything but the issuer is checked.
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience,
                            options={"require": ["sub", "roles", "aud", "exp"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return 401, "roles is not a list of strings"
    if role not in roles:
        return 403, "missing role"
    return 200, claims


def authorize_roles_substring(headers, public_key, audience, role, issuer):
    # Subtle: `role in roles` also holds for a string that contains the role's name.
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience, issuer=issuer,
                            options={"require": ["sub", "roles", "aud", "iss", "exp"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    if role not in claims["roles"]:
        return 403, "missing role"
    return 200, claims


def authorize_sub_optional(headers, public_key, audience, role, issuer):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience, issuer=issuer,
                            options={"require": ["roles", "aud", "iss", "exp"]})
    except jwt.PyJWTError as exc:
        return 401, str(exc)
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return 401, "roles is not a list of strings"
    if role not in roles:
        return 403, "missing role"
    return 200, claims


def authorize_forbids_invalid(headers, public_key, audience, role, issuer):
    header = headers.get("Authorization", "")
    token = header[len("Bearer "):] if header.startswith("Bearer ") and len(header) > 7 else None
    if token is None:
        return 401, "no token"
    try:
        claims = jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience, issuer=issuer,
                            options={"require": ["sub", "roles", "aud", "iss", "exp"]})
    except jwt.PyJWTError as exc:
        return 403, str(exc)
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return 401, "roles is not a list of strings"
    if role not in roles:
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


def _wait_s(answer):
    value = answer.headers.get("Retry-After", "")
    if value.strip().isdigit():
        return int(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 1.0


def _notes_with(sign_in, client, notes_url, token, on_second_401):
    if token is None:
        token = sign_in()
        if token is None:
            return None, None
    response = client.get(notes_url + "/notes", headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 401:
        token = sign_in()
        if token is None:
            return None, None
        response = client.get(notes_url + "/notes", headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 401:
            return on_second_401(response, token)
    if response.status_code == 403:
        return None, token
    response.raise_for_status()
    return response.json()["notes"], token


def notes_sleeping_after_the_last_429(client, auth_url, notes_url, credentials, token):
    # Subtle: it waits after every 429, the third too, although no attempt follows.
    def sign_in():
        for _ in range(3):
            answer = client.post(auth_url + "/login", json=credentials)
            if answer.status_code != 429:
                break
            time.sleep(_wait_s(answer))
        if answer.status_code != 200:
            return None
        return answer.json()["token"]

    return _notes_with(sign_in, client, notes_url, token, lambda response, token: (None, None))


def notes_retry_after_as_int(client, auth_url, notes_url, credentials, token):
    # Subtle: int() of Retry-After, which may be an HTTP date.
    def sign_in():
        for attempt in range(3):
            answer = client.post(auth_url + "/login", json=credentials)
            if answer.status_code != 429:
                break
            if attempt < 2:
                time.sleep(int(answer.headers.get("Retry-After", "1")))
        if answer.status_code != 200:
            return None
        return answer.json()["token"]

    return _notes_with(sign_in, client, notes_url, token, lambda response, token: (None, None))


def notes_raising_on_a_second_401(client, auth_url, notes_url, credentials, token):
    def sign_in():
        for attempt in range(3):
            answer = client.post(auth_url + "/login", json=credentials)
            if answer.status_code != 429:
                break
            if attempt < 2:
                time.sleep(_wait_s(answer))
        if answer.status_code != 200:
            return None
        return answer.json()["token"]

    def second_401(response, token):
        response.raise_for_status()

    return _notes_with(sign_in, client, notes_url, token, second_401)


def notes_keeping_the_refused_token(client, auth_url, notes_url, credentials, token):
    # Subtle: after the second 401 it returns the token the service just refused.
    def sign_in():
        for attempt in range(3):
            answer = client.post(auth_url + "/login", json=credentials)
            if answer.status_code != 429:
                break
            if attempt < 2:
                time.sleep(_wait_s(answer))
        if answer.status_code != 200:
            return None
        return answer.json()["token"]

    return _notes_with(sign_in, client, notes_url, token, lambda response, token: (None, token))


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
    ("q6.1", authorize_ignores_issuer,
     ["a token whose iss is 'someone-else', not the issuer you were given: it returned status 200, expected 401",
      "issuer=issuer"]),
    ("q6.1", authorize_roles_substring,
     ["a token whose roles is the string 'not-an-admin', asking for role admin: it returned status 200, "
      "expected 401", "a list of strings"]),
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
    ("q6.2", notes_sleeping_after_the_last_429,
     ["while the sign-in service answers every attempt 429: it returned", "after the third 429",
      "without sleeping after it"]),
    ("q6.2", notes_retry_after_as_int,
     ["Retry-After as an HTTP date: your answer raised ValueError"]),
    ("q6.2", notes_raising_on_a_second_401,
     ["a notes service that refuses even a fresh token (401 twice): your answer raised HTTPError"]),
    ("q6.2", notes_keeping_the_refused_token,
     ["with a notes service that answers 401 to every token, even a fresh one: it returned None and a token; "
      "expected (None, None)"]),
]
