#!/bin/sh
# synctasks' remote script (the shell backend): see synctasks/backends/shell.py
# for the protocol. Runs under any POSIX sh with GNU, BusyBox or BSD tools.
# Argument: MODE (list | checksum | ops). Stdin: the run's token (never on a
# command line), then (checksum) the python3 hasher and an empty line, then
# (list modes) one "d:DEST" or "f:DEST" line per mapping and an empty line,
# then the operations.
# shellcheck disable=SC2016,SC2086
# (SC2016: the $ in single quotes are for sh -c children; SC2086: $depth is
# empty or two words, on purpose)

# Every path we are given is absolute; a relative one must never land in $HOME.
cd / || exit 5
mode=$1
shift
P=__STAGING__
printf 'I\0'
IFS= read -r r || exit 3
# list/checksum: a fresh random part, to which this shell adds its host and
# PID (a staging folder of a live run is never taken for a leftover); ops:
# the token of the run whose work this channel finishes.
case $r in *[!A-Za-z0-9._-]*|'') exit 3 ;; esac
# This host's name, as uname -n gives it, every byte but [A-Za-z0-9.] made
# "_"; without a program where we can (each costs a fork and an exec).
node=
[ -r /proc/sys/kernel/hostname ] && IFS= read -r node </proc/sys/kernel/hostname
[ -n "$node" ] || node=$(uname -n 2>/dev/null)
while case $node in *-*) ;; *) false ;; esac; do node=${node%%-*}_${node#*-}; done
case $node in *[!A-Za-z0-9.]*) node=$(printf %s "$node" | tr -c 'A-Za-z0-9.' '_') ;; esac
node=${node:-host}
if [ "$mode" = ops ]; then t=$r; else t=$node-$$-$r; fi
H='[0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
# Only names of this exact shape are staging folders (a user's own file that
# merely starts with the prefix is data, listed and synced like any other).
PAT="$P*-[0-9]*-$H$H$H$H"
NL='*
*'
STALE='for s do
  n=${s##*/}; r=${n#"$P"}; r=${r%-*}; pid=${r##*-}; nd=${r%-*}
  if [ "$nd" = "$node" ]; then
    if [ -r "/proc/$pid/stat" ]; then
      IFS= read -r st <"/proc/$pid/stat"; st=${st##*") "}; st=${st%% *}
      if [ "$st" != Z ]; then printf "A%s\0" "$s"; continue; fi
    elif [ ! -d /proc/self ] && kill -0 "$pid" 2>/dev/null; then printf "A%s\0" "$s"; continue
    fi
  elif [ -n "$(find "$s" -maxdepth 0 -mmin -1440 2>/dev/null)" ]; then
    # Made on another machine (a shared file system): its PID means nothing
    # here, so it is a leftover only once it is a day old.
    printf "A%s\0" "$s"; continue
  fi
  printf "S%s\0" "$s"
done'
export P node
# perl's loader of our code (sink.pl, ops.pl): its first argument is the
# code's length, read from stdin exactly (the stream or names follow).
LOAD='$l = shift; $c = ""; while (length($c) < $l) {
  last unless sysread(STDIN, $c, $l - length($c), length($c)) } eval $c; die $@ if $@'
# A folder that could not be made (mkparent, mkstage, mkdirs, perl mkdir)
# sets pf: every later stream is refused (the client sent it before it read
# that answer; it sends it again, without that mapping, on a new channel).
mark() { case $1 in mk*) [ "$2" = 0 ] || pf=1 ;; esac; printf '\n@@%s@@ %s %s\n' "$t" "$1" "$2"; }
# enter TOP DIR: cd into TOP/DIR without following a symlink below TOP (TOP
# itself is the user's dest or above it: trusted as given). cd -P sets PWD to
# the physical path, so a component swapped for a link shows as a mismatch.
enter() {
  cd -P -- "$1" || return 1
  [ -n "$2" ] || return 0
  b=${PWD%/}
  if cd -P -- "./$2" 2>/dev/null && [ "$PWD" = "$b/$2" ]; then return 0; fi
  echo "$1/$2: not entered: a symlink or a missing folder is in the way below the dest" >&2
  return 1
}
# stage TOP DIR: cd into this run's staging folder of TOP/DIR, refusing one
# that is a link, moved, or not ours.
stage() {
  enter "$1" "$2" || return 1
  h=${PWD%/}
  if cd -P -- "$P$t" 2>/dev/null && [ "$PWD" = "$h/$P$t" ] && [ -O . ]; then return 0; fi
  echo "$1/$2/$P$t: the staging folder is not ours (replaced or moved by someone else)" >&2
  return 1
}
# names PRE SUF: run "PRE names... SUF" with the names that follow on stdin
# (up to an empty line), 50 at a time (set -- "$@" copies the list: a
# batch costs its size squared).
names() {
  pre=$1; suf=$2; nrc=0; n=0; set --
  while IFS= read -r p; do
    [ -n "$p" ] || break
    set -- "$@" "$p"; n=$((n + 1))
    if [ $n -ge 50 ]; then eval "$pre \"\$@\" $suf" || nrc=1; set --; n=0; fi
  done
  if [ $n -gt 0 ]; then eval "$pre \"\$@\" $suf" || nrc=1; fi
  return $nrc
}
# nolinks CMD...: names, but never a symlink (chmod and touch follow them).
nolinks() {
  nrc=0; cmd=$*
  while IFS= read -r p; do
    [ -n "$p" ] || break
    if [ -h "$p" ]; then echo "$p: is a symlink now: left alone" >&2; nrc=1; continue; fi
    eval "$cmd \"\$p\"" || nrc=1
  done
  return $nrc
}
skiprest() { while IFS= read -r p && [ -n "$p" ]; do :; done; }
# loc: read TOP and DIR, enter there (or this run's staging folder of it: $1 = stage)
loc() {
  IFS= read -r top; IFS= read -r dir
  if [ "$1" = stage ]; then stage "$top" "$dir"; else enter "$top" "$dir"; fi
}

# files0 DEST: the files of DEST ($depth: as listed), NUL-ended (a name with
# a newline is never synced: it needs no sum)
files0() { f=$1; shift; find -H "$f" $depth \( -name "$PAT" -o -name "$NL" \) -prune -o -type f "$@"; }
# sums DEST: sha256sum's lines (NUL-ended) for the files of DEST
sums() {
  if [ $lm = gnu ] && [ "$sum" = sha256sum ]; then
    ob find -H "$1" $depth -name "$PAT" -prune -o -type f -exec sha256sum -z -- {} +
  elif [ -n "$sum" ]; then files0 "$1" -exec sh -c "$sum"' "$@" | tr "\n" "\0"' sh {} +
  fi
}
# deep KIND: $depth for a dest of KIND (d: a folder, f: a file)
# ob CMD...: CMD writing its output 1 MiB at a time (GNU stdbuf), not
# find's 4 KiB: a listing then crosses in full SSH packets, each a round of
# Python on the client (100,000 entries: 0.15 s of its CPU, 0.03 with).
# Without stdbuf (125: it cannot preload), CMD as it is (meant: C runs
# when B fails).
# shellcheck disable=SC2015
ob() { command -v stdbuf >/dev/null && { stdbuf -o1M "$@"; [ $? != 125 ]; } || "$@"; }
deep() { if [ "$1" = d ]; then depth=; else depth='-maxdepth 0'; fi; }
# eachd CMD ARG...: CMD DEST ARG... for each dest left to hash (lines k:DEST in $hd)
eachd() {
  c=$1; shift
  printf %s "$hd" | while IFS= read -r m; do deep "${m%%:*}"; "$c" "${m#*:}" "$@"; done
}

if [ "$mode" != ops ]; then
  hd=
  printf 'T%s\0H%s\0' "$t" "$HOME"
  if find / -maxdepth 0 -printf '' >/dev/null 2>&1; then lm=gnu
  elif stat -c %s / >/dev/null 2>&1; then lm=statc
  elif stat -f %z / >/dev/null 2>&1; then lm=statf
  else printf 'Xnofind\0'; exit 4
  fi
  if [ "$mode" = checksum ]; then
    # our python3 hasher (hasher.py) comes first, up to an empty line: where
    # python3 runs it, one process hashes every file
    pyc=; while IFS= read -r l && [ -n "$l" ]; do pyc="$pyc$l
"; done
    py=; command -v python3 >/dev/null 2>&1 && py=1
    if sha256sum /dev/null >/dev/null 2>&1; then sum=sha256sum
    elif shasum -a 256 /dev/null >/dev/null 2>&1; then sum='shasum -a 256'
    elif [ -z "$py" ]; then printf 'Xnosum\0'; exit 4
    fi
  fi
  printf 'L%s\0' "$lm"
  # A host with perl renames a whole commit in one process (else: one mv per folder).
  if command -v perl >/dev/null 2>&1; then printf 'Pperl\0'; fi
  while IFS= read -r m && [ -n "$m" ]; do
    k=${m%%:*}; d=${m#*:}
    # D/F: a mapping that names an owner or group also wants names (finding
    # names costs GNU find a read of /etc/passwd per entry); d/f: ids only.
    own='\0'; sc=/; sf=/
    case $k in D|F) own='%u\0%g'; sc=%U/%G; sf=%Su/%Sg ;; esac
    case $k in D) k=d ;; F) k=f ;; esac
    printf 'M%s\0' "$d"
    deep "$k"
    # Can we write where the work lands? (the dest folder, else the nearest
    # folder that exists above it)
    w=$d
    if [ "$k" = f ] || [ ! -d "$d" ]; then w=${d%/*}; fi
    while [ -n "$w" ] && [ ! -d "$w" ]; do w=${w%/*}; done
    if [ -w "${w:-/}" ]; then printf 'W1\0'; else
      # who we are: only its error message needs it
      printf 'W0%s\0U%s\0' "${w:-/}" "$(id -un 2>/dev/null || id -u)"
    fi
    if [ -e "$d" ] || [ -h "$d" ]; then
      # A file dest that is a link is listed through it: say so.
      if [ "$k" = f ] && [ -h "$d" ]; then printf 'Y%s\0' "$(readlink "$d")"; fi
      if [ $lm = gnu ] && [ "$own" = '\0' ]; then
        # R records: kind+mode size seconds path-below-dest, byte for byte
        # what the client expects of an unchanged entry (compared whole).
        TZ=UTC0 ob find -H "$d" $depth -name "$PAT" -prune -exec sh -c "$STALE" sh {} + \
          -o -type f -printf 'Rf%m %s %Ts %P\0' -o -type d -printf 'Rd%m 0 0 %P\0' \
          -o -type l -printf 'Rl%m 0 0 %P\0%l\0' -o -printf 'R%y%m %s %Ts %P\0'
      elif [ $lm = gnu ]; then
        ob find -H "$d" $depth -name "$PAT" -prune -exec sh -c "$STALE" sh {} + \
          -o -printf "E%y %m %s %T@ %U %G %p\\0%l\\0$own\\0"
      else
        # Without -printf, records are lines: names holding a newline cannot
        # be carried; they are named (N) and left out, below them included.
        find -H "$d" $depth -name "$NL" -prune -exec sh -c 'printf "N%s\0" "$@"' sh {} +
        if [ $lm = statc ]; then fmt="F%f/%s/%Y/$sc/%u/%g/%n"; else fmt="G%p/%z/%m/$sf/%u/%g/%N"; fi
        find -H "$d" $depth -name "$PAT" -prune -exec sh -c "$STALE" sh {} + -o -name "$NL" -prune \
          -o -exec sh -c 'stat -'"${lm#stat}"' "$0" "$@" | tr "\n" "\0"' "$fmt" {} +
        find -H "$d" $depth \( -name "$PAT" -o -name "$NL" \) -prune -o -type l \
          -exec sh -c 'for l do printf "K%s\0%s\0" "$l" "$(readlink "$l")"; done' sh {} +
      fi
      if [ "$mode" = checksum ]; then
        # with python3: every dest hashed by one process, after the last
        if [ -n "$py" ]; then hd="$hd$k:$d
"; else sums "$d"; fi
      fi
    fi
    # Staging folders of a cut run can also sit beside dest (a new dest is
    # built there, a file's staging folder is there).
    p=${d%/*}; [ -n "$p" ] || p=/
    if [ -d "$p" ]; then find "$p" -mindepth 1 -maxdepth 1 -name "$PAT" -exec sh -c "$STALE" sh {} +; fi
  done
  if [ -n "$hd" ]; then
    # The sums of every dest follow (C), known by their paths. (python3
    # fails only if it cannot run: then the tools hash.)
    printf 'C\0'
    eachd files0 -print0 | python3 -c "$pyc" || eachd sums
  fi
  printf 'Z%s\0' "$t"
fi
umask 077
while IFS= read -r line; do
  case $line in "@@$t@@ "*) op=${line#"@@$t@@ "} ;; *) mark bad 3; exit 3 ;; esac
  cd / || exit 5
  case $op in
  rm) IFS= read -r where
    if loc "$where" 2>&1; then names 'rm -rf --' '' 2>&1; rc=$?; else rc=1; skiprest; fi; mark rm $rc ;;
  mkparent) umask 022; names 'mkdir -p --' '' 2>&1; rc=$?; umask 077; mark mkparent $rc ;;
  mkstage)
    # Exclusively: an existing name (a planted folder or link) is refused.
    if loc 2>&1; then mkdir -- "$P$t" 2>&1 && stage "$top" "$dir" 2>&1; rc=$?; else rc=1; fi
    mark mkstage $rc ;;
  ln) IFS= read -r target; IFS= read -r path
    if loc stage 2>&1; then ln -s -- "$target" "$path" 2>&1; rc=$?; else rc=1; fi; mark ln $rc ;;
  mkdirs) # exclusively (no -p): names relative to the folder entered
    if loc 2>&1; then names 'mkdir --' '' 2>&1; rc=$?; else rc=1; skiprest; fi; mark mkdirs $rc ;;
  scp) IFS= read -r where; IFS= read -r top; IFS= read -r dir; IFS= read -r size; IFS= read -r cl
    case $size/$cl in *[!0-9/]*|/*|*/) mark bad 3; exit 3 ;; esac
    if [ "$where" = stage ]; then into=stage; else into=enter; fi
    if [ -n "$pf" ] || ! $into "$top" "$dir" 2>&1; then
      # Nothing may be written: refuse the stream and swallow it.
      mark scp "1 9"; exec cat >/dev/null
    fi
    # The sink's target is the folder entered (not named): whatever happens
    # in the stream, it cannot write above it. Under sudo that is this run's
    # staging folder; otherwise the mapping's top folder, the stream
    # entering each folder's staging folder (made by mkdirs). GNU head
    # hands it exactly its stream in big reads (the sink reads records a
    # byte at a time); its answers wait in a file, read once.
    if [ $into = stage ]; then a=$P$t.acks; else
      # the sink's answers wait in this run's staging folder of the top folder
      [ -d "$P$t" ] || mkdir -- "$P$t"; a=$P$t/$P$t.acks
    fi
    h=$a.head
    if [ "$cl" = 0 ] && [ -z "$gnuhead" ]; then
      # Only GNU head -c stops reading at its count (others read ahead).
      if head --version 2>/dev/null | grep -q coreutils; then gnuhead=1; else gnuhead=0; fi
    fi
    if [ "$cl" != 0 ]; then
      # A host with perl: our perl sink (its code comes first on stdin, cl
      # bytes) reads exactly the stream, in big blocks.
      umask 0
      perl -e "$LOAD" "$cl" "$size" >"$a" 2>&1
      rc=$?; umask 077; hs=$rc
    elif [ "$gnuhead" = 1 ]; then
      umask 0
      { head -c "$size"; echo $? >"$h"; } | scp -r -d -t -- . >"$a"; rc=$?
      umask 077; hs=1; if [ -r "$h" ]; then IFS= read -r hs <"$h"; fi
    else
      # The sink reads no further than its stream; but if it failed, how
      # far it read is unknown.
      umask 0; scp -r -d -t -- . >"$a"; rc=$?; umask 077; hs=$rc
    fi
    cat "$a"; rm -f "$a" "$h"; mark scp "$rc $hs"
    # Unless head passed on the whole stream, what is left of it must never
    # be taken for operations: swallow it until the client closes. (The
    # client commits on a second channel meanwhile; this PID stays alive, so
    # no other run takes the staging folders for stale.)
    [ "$hs" = 0 ] || exec cat >/dev/null ;;
  perl) # WHAT TOP DIR N CL: our ops.pl (CL bytes), then N bytes of names,
    # for one perl (sysread: no read-ahead; the shell reads a byte at a time)
    IFS= read -r what; if loc 2>&1; then ok=1; else ok=0; fi
    IFS= read -r n; IFS= read -r cl
    case $what in mv|mkdir|rm) ;; *) mark bad 3; exit 3 ;; esac
    case $n/$cl in *[!0-9/]*|/*|*/) mark bad 3; exit 3 ;; esac
    perl -e "$LOAD" "$cl" "$n" "$ok" "$what" 2>&1
    mark "$what" $? ;;
  mv) # by the names we sent, from the staging folder (entered) to its folder
    if loc stage 2>&1; then names 'mv -f --' .. 2>&1; rc=$?; else rc=1; skiprest; fi
    mark mv $rc ;;
  chmod) IFS= read -r bits
    case $bits in *[!0-7]*|'') mark bad 3; exit 3 ;; esac
    if loc 2>&1; then nolinks "chmod $bits --" 2>&1; rc=$?; else rc=1; skiprest; fi; mark chmod $rc ;;
  chown) IFS= read -r spec; IFS= read -r where
    case $spec in *[!A-Za-z0-9_.:-]*|'') mark bad 3; exit 3 ;; esac
    if loc "$where" 2>&1; then names "chown -h $spec --" '' 2>&1; rc=$?; else rc=1; skiprest; fi; mark chown $rc ;;
  touch) IFS= read -r stamp
    case $stamp in *[!0-9.-]*|'') mark bad 3; exit 3 ;; esac
    if loc 2>&1; then
      TZ=UTC0; export TZ; nolinks "touch -m -t $stamp --" 2>&1; rc=$?; unset TZ
    else rc=1; skiprest; fi
    mark touch $rc ;;
  q) mark q 0; exit 0 ;;
  *) mark bad 3; exit 3 ;;
  esac
done
