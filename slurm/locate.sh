# Sourced by the sbatch templates, after they set REPO (the repository they are in): the package's
# command and the experiment's path, wherever the job was submitted from.
#
#   PYRAMIDREPRO   $REPO/.venv/bin/pyramidrepro (make venv), else the pyramidrepro on PATH
#   in_repo PATH   PATH as given when absolute or present under the submit folder, else under $REPO
if [ -x "$REPO/.venv/bin/pyramidrepro" ]; then
    PYRAMIDREPRO=$REPO/.venv/bin/pyramidrepro
elif ! PYRAMIDREPRO=$(command -v pyramidrepro); then
    echo "locate.sh: no pyramidrepro: run 'make venv' in $REPO, or activate the venv it is installed in" >&2
    exit 2
fi

in_repo() {
    case $1 in
        /*) echo "$1" ;;
        *) if [ -e "$1" ]; then echo "$PWD/$1"; else echo "$REPO/$1"; fi ;;
    esac
}
