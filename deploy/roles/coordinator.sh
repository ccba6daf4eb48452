# shellcheck shell=bash
# deploy/install.sh --role coordinator: the coordinator service, its config, its database and its
# key. Sourced by install.sh, which defines the helpers used here.

UNIT_NAME=edgeproof-coordinator.service
USER_NAME=edgeproof-coordinator
USER_COMMENT="edgeproof coordinator"
USER_GROUP=""
CONF_DIR=/etc/edgeproof-coordinator
CONF=$CONF_DIR/coordinator.toml
STATE_DIR=/var/lib/edgeproof-coordinator
KEY=$STATE_DIR/coordinator-key.json
EXAMPLE_SRC=$SRC/deploy/coordinator.example.toml
WITH_DATA=1
EXEC_START_RE="^ExecStart=$VENV_DIR/bin/edgeproof .*coordinator run --config $CONF\$"
EXEC_START_WHAT="coordinator run --config $CONF"

# redact URL: the URL with its password (if any) replaced by ***, for printing.
redact() {
	printf '%s\n' "$1" | sed -E 's#^([a-z]+://[^:/@]+):[^@]*@#\1:***@#'
}

role_checks() {
	if [ "$DB_URL_OPTION" = 1 ]; then
		case "$DB_URL" in
		postgresql://?* | postgres://?*) ;;
		*) die "--database-url '$(redact "$DB_URL")' is not a postgresql:// URL" \
			"--database-url postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (SQLite needs no option)" ;;
		esac
		case "$DB_URL" in
		*'"'* | *\\* | *[[:space:]]*)
			die "--database-url must not hold quotes, backslashes or spaces" \
				"percent-encode them (%22, %5C, %20) as URLs do"
			;;
		esac
	fi
}

role_extras() {
	echo coordinator,litert # psycopg, the dashboard; LiteRT for reference runs of .tflite models
}

# sqlite_file: where the SQLite database goes under $DEST ([storage] sqlite_path, relative to
# the config's folder, as the coordinator reads it).
sqlite_file() {
	local sqlite
	sqlite=$(toml_string "$DEST$CONF" storage sqlite_path)
	case "$sqlite" in
	"") sqlite=$CONF_DIR/coordinator.sqlite3 ;;
	/*) ;;
	*) sqlite=$CONF_DIR/$sqlite ;;
	esac
	printf '%s\n' "$DEST$sqlite"
}

role_install() {
	local url public sqlite="" file migrate
	step "config $DEST$CONF"
	if [ -e "$DEST$CONF" ]; then
		note "exists: kept (never overwritten); compare with $SHARE_DIR/coordinator.example.toml after upgrades"
	else
		put 0640 root "$USER_NAME" "$EXAMPLE_SRC" "$CONF"
		note "written from deploy/coordinator.example.toml: edit [mqtt] before relying on it"
	fi
	if [ -e "$DEST$CONF" ]; then
		url=$(toml_string "$DEST$CONF" storage database_url) ||
			die "$DEST$CONF is not valid TOML" "edgeproof coordinator migrate --config $DEST$CONF names the line"
	else
		url="" # --dry-run of a first install
	fi
	if [ "$DB_URL_OPTION" = 1 ] && [ "$DB_URL" = "$url" ]; then
		note "database: $(redact "$url") (unchanged)"
	elif [ "$DB_URL_OPTION" = 1 ]; then
		if [ -n "$url" ]; then
			note "database changes from $(redact "$url")"
		fi
		if [ "$DRY_RUN" = 1 ]; then
			note "would set [storage] database_url = \"$(redact "$DB_URL")\" in $DEST$CONF"
		else
			set_toml_string "$DEST$CONF" storage database_url "$DB_URL"
			[ "$(toml_string "$DEST$CONF" storage database_url)" = "$DB_URL" ] ||
				die "the database URL did not land in $DEST$CONF" "set [storage] database_url by hand"
			note "database: $(redact "$DB_URL")"
		fi
	elif [ -n "$url" ]; then
		note "database: $(redact "$url") (kept; --database-url changes it)"
	else
		note "database: SQLite in $STATE_DIR (--database-url postgresql://... for PostgreSQL)"
	fi

	step "coordinator key $DEST$KEY"
	# As for the agent: made and read by the coordinator's user, never by root through a link.
	role_key
	if [ "$DRY_RUN" = 0 ]; then
		public=$(key_id "$DEST$KEY")
		note "coordinator public key: $public"
		note "devices pin it with: deploy/install.sh --coordinator-key $public"
	fi

	step "database"
	# With --root or --prefix the config names the installed system's paths: the SQLite file is
	# made under $DEST instead (a PostgreSQL URL is used as it is).
	migrate=("$EDGEPROOF" coordinator migrate --config "$DEST$CONF")
	if [ -n "$DEST" ] && [ -e "$DEST$CONF" ]; then
		sqlite=$(sqlite_file)
		no_link "$sqlite" "$sqlite-wal" "$sqlite-shm"
		migrate+=(--sqlite-path "$sqlite")
	fi
	if [ "$DRY_RUN" = 1 ]; then
		as_user "${migrate[@]}"
		return 0
	fi
	if ! (umask 0077 && as_user "${migrate[@]}" | sed 's/^/    /'); then
		die "the database could not be created or migrated (the message above says why)" \
			"check [storage] in $DEST$CONF; for PostgreSQL: createuser/createdb, pg_hba.conf, the URL"
	fi
	if [ "$ROOT_MODE" = 1 ] && [ -z "$(toml_string "$DEST$CONF" storage database_url)" ]; then
		for file in "$sqlite" "$sqlite-wal" "$sqlite-shm"; do
			if [ -e "$file" ]; then
				set_owner "$USER_NAME" "$USER_NAME" "$file"
			fi
		done
	fi
}

role_done() {
	note "edit:   $CONF ([mqtt] host, credentials), then: systemctl restart $UNIT_NAME"
	note "status: systemctl status $UNIT_NAME; $VENV_DIR/bin/edgeproof coordinator devices --config $CONF"
	note "logs:   journalctl -u $UNIT_NAME -f"
}
