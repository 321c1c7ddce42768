# read_state PATH... [--units UNIT...] [--accounts NAME...] [--packages NAME...]
#
# The state of what a role manages, read in one round trip so that its tasks can skip what is
# already as they would make it (each task still runs whenever the state differs or is
# unknown). Prints JSON members, for an object the caller wraps:
#   "files":       {path: "<sha256> owner:group:mode" | "dir owner:group:mode"
#                   | "link <target>" | "absent"}
#   "unit_states": {unit: "<systemctl is-enabled> <systemctl is-active>"}
#   "accounts":    {name: "<passwd gid:gecos:home:shell> <group gid>"}
#   "packages":    {name: "<dpkg status: installed, not-installed, ...>"}
# Sourced by the preflight's read and run by the roles' tasks/read_state.yml.
read_state() {
  local what=files files='' units='' accounts='' packages='' s item
  for item in "$@"; do
    case $item in
      --units) what=units; continue ;;
      --accounts) what=accounts; continue ;;
      --packages) what=packages; continue ;;
    esac
    case $what in
      files)
        if [ -L "$item" ]; then
          s="link $(readlink "$item")"
        elif [ -f "$item" ]; then
          s="$(sha256sum < "$item" | cut -d' ' -f1) $(stat -c '%U:%G:%a' "$item")"
        elif [ -d "$item" ]; then
          s="dir $(stat -c '%U:%G:%a' "$item")"
        else
          s=absent
        fi
        files="$files${files:+, }\"$item\": \"$s\"" ;;
      units)
        s="$(systemctl is-enabled "$item" 2>/dev/null) $(systemctl is-active "$item" 2>/dev/null)"
        units="$units${units:+, }\"$item\": \"$(printf '%s' "$s" | tr -d '"\\')\"" ;;
      accounts)
        s="$(getent passwd "$item" | cut -d: -f4-) $(getent group "$item" | cut -d: -f3)"
        accounts="$accounts${accounts:+, }\"$item\": \"$(printf '%s' "$s" | tr -d '"\\')\"" ;;
      packages)
        s=$(dpkg-query --show --showformat='${db:Status-Status}' "$item" 2>/dev/null)
        packages="$packages${packages:+, }\"$item\": \"${s:-not-installed}\"" ;;
    esac
  done
  printf '"files": {%s}, "unit_states": {%s}, "accounts": {%s}, "packages": {%s}' \
    "$files" "$units" "$accounts" "$packages"
}

# Run as `bash -c "<this file>" read_state ARGS...`: print the object.
if [ "$0" = read_state ]; then
  printf '{%s}\n' "$(read_state "$@")"
fi
